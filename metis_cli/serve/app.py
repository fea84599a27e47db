"""The FastAPI app of `metis serve`: endpoints on the job layer, errors in the OpenAI shape.

Every request becomes a `jobs.make_job` job (the CLI's validation and wording), its decoding
options are checked by `options.DecodingOptions` (a bad value is 422 naming the field), and it
runs in its pipeline's `Batcher`. Uploads are read into memory (bounded by
`Limits.max_upload_bytes`) and decoded there; nothing a client sends is used as a path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.staticfiles import StaticFiles

from metis_cli import __version__
from metis_cli import jobs as J
from metis_cli import options as O
from metis_cli.constants import CODEC_SAMPLE_RATE
from metis_cli.core.tasks import TASKS
from metis_cli.errors import MetisError, UsageError
from metis_cli.media.audio import AudioArray
from metis_cli.serve import media
from metis_cli.serve.batcher import Batcher, BatchFailed, ClientGone, DeadlineExceeded, NotReady, QueueFull
from metis_cli.serve.config import ServeConfig
from metis_cli.serve.errors import ApiError, field_message, from_job_error, from_metis
from metis_cli.serve.metrics import Metrics
from metis_cli.serve.voices import VoiceStore

log = logging.getLogger("metis.serve")

STATIC = Path(__file__).parent / "static"
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
OPENAI_TTS_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "metis")
PUBLIC_PATHS = ("/", "/healthz", "/readyz", "/favicon.ico")
DECODING_FIELDS = {
    "steps": int,
    "cfg": float,
    "temperature": float,
    "s2a_steps": str,
    "s2a_temperature": float,
}
SPEECH_FIELDS = {
    "model", "input", "voice", "response_format", "speed", "instructions", "stream_format",
    "seed", "language", "duration", *DECODING_FIELDS,
}  # fmt: skip
# multipart endpoints: audio roles per task (a role may instead name a registered voice)
ROUTES = {"enhance": "se", "tse": "tse", "vc": "vc", "tts": "tts"}
VOICE_ROLE = {"vc": "reference", "tse": "enrol", "tts": "prompt"}
ENDPOINTS = {
    "/v1/audio/speech", "/v1/tts", "/v1/enhance", "/v1/tse", "/v1/vc", "/v1/voices", "/v1/models",
    "/healthz", "/readyz", "/metrics", "/",
}  # fmt: skip


class _InMemoryMultiPart(MultiPartParser):
    """Starlette's multipart parser with uploads kept in memory (the body is bounded before)."""

    spool_max_size = 1 << 40


class Service:
    """Everything the endpoints share."""

    def __init__(
        self,
        config: ServeConfig,
        pipelines: dict[str, Any],
        on_fatal: Callable[[str, str], None] | None = None,
    ) -> None:
        self.config = config
        self.limits = config.limits
        self.pipelines = pipelines
        self.metrics = Metrics(config.max_batch)
        self.voices = VoiceStore(config.voices_dir)
        if config.voices_file is not None:
            self.voices.load_file(config.voices_file)
        self.voices.load_folder()
        locks: dict[str, threading.Lock] = {}
        self.batchers: dict[str, Batcher] = {}
        for task, pipe in pipelines.items():
            device = str(getattr(pipe.engine, "device", "cpu"))
            self.metrics.declare(task)
            self.batchers[task] = Batcher(
                task,
                pipe,
                max_batch=config.max_batch,
                max_wait_ms=config.max_wait_ms,
                max_queue=config.max_queue,
                metrics=self.metrics,
                device_lock=locks.setdefault(device, threading.Lock()),
                on_fatal=on_fatal,
            )
        self.formats = media.response_formats()

    def batcher(self, task: str) -> Batcher:
        b = self.batchers.get(task)
        if b is None:
            served = ", ".join(self.batchers) or "none"
            raise ApiError(
                404, f"task '{task}' is not served here (serving: {served})", None, "task_not_served"
            )
        if b.load_error is not None:
            raise ApiError(503, b.load_error, None, "not_ready")
        return b


def create_app(
    config: ServeConfig,
    pipelines: dict[str, Any] | None = None,
    on_fatal: Callable[[str, str], None] | None = None,
) -> FastAPI:
    """The service. `pipelines`: {task: Pipeline} already built (lazy: weights load in each
    pipeline's worker at start), else built here from `config.load_options`."""
    config = config.validate()
    if pipelines is None:
        from metis_cli.api import load

        pipelines = {
            t: load(t, **{**config.load_options, "batch_size": config.max_batch}) for t in config.tasks
        }
    for task, pipe in pipelines.items():
        if pipe.engine.options.batch_size < config.max_batch:
            raise UsageError(
                f"{task}: the pipeline's batch size {pipe.engine.options.batch_size} is below --max-batch"
            )
    service = Service(config, pipelines, on_fatal)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        for b in service.batchers.values():
            b.start()
        try:
            yield
        finally:
            for b in service.batchers.values():
                await asyncio.to_thread(b.stop, 60.0)

    app = FastAPI(
        title="metis",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # the Swagger page loads its scripts from a CDN
        redoc_url=None,
    )
    app.state.service = service
    app.add_middleware(_Gate, service=service)
    _handlers(app)
    _routes(app, service)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


# ---- the gate: request ids, authentication, metrics, access log ---------------------------------------


class _Gate:
    """A plain ASGI middleware (so disconnect detection reaches the endpoints untouched)."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id", "")
        if not REQUEST_ID_RE.fullmatch(rid):
            rid = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        path = scope.get("path", "")
        endpoint = _endpoint_label(path)
        status = {"code": 500}
        t0 = time.perf_counter()

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
            await send(message)

        try:
            key = self.service.config.api_key
            if key is not None and not _public(path) and not _authorised(headers, key):
                missing = "authorization" not in headers
                err = ApiError(
                    401,
                    "missing API key (send Authorization: Bearer KEY)" if missing else "invalid API key",
                    None,
                    "missing_api_key" if missing else "invalid_api_key",
                    {"WWW-Authenticate": "Bearer"},
                )
                await _error_response(err)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            dt = time.perf_counter() - t0
            m = self.service.metrics
            m.requests.labels(endpoint, str(status["code"])).inc()
            m.latency.labels(endpoint).observe(dt)
            log.info("%s %s %s %d %.3fs", rid, scope.get("method", ""), endpoint, status["code"], dt)


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith("/static/")


def _authorised(headers: dict[str, str], key: str) -> bool:
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), key.encode())


def _endpoint_label(path: str) -> str:
    if path in ENDPOINTS:
        return path
    if path.startswith("/v1/voices/"):
        return "/v1/voices/{id}"
    if path.startswith("/static/"):
        return "/static"
    return "other"


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            msg = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            msg = f"method {request.method} is not allowed on {request.url.path}"
        else:
            msg = str(exc.detail)
        return _error_response(ApiError(exc.status_code, msg, None, None, dict(exc.headers or {})))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = loc[-1] if loc else None
        return _error_response(ApiError(422, f"{param or 'request'}: {first.get('msg', 'invalid')}", param))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        rid = request.scope.get("state", {}).get("request_id", "?")
        log.error("%s: internal error: %s", rid, type(exc).__name__, exc_info=exc)
        return _error_response(ApiError(500, f"internal error (request id {rid})", None, "internal_error"))


# ---- request bodies --------------------------------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, at most `limit` bytes (413 beyond, also without a Content-Length)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, f"request body is {int(declared)} bytes (at most {limit} on this server)", None, "too_large"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(
                413, f"request body is over {limit} bytes (the limit on this server)", None, "too_large"
            )
    return bytes(body)


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "")
    if ctype and "json" not in ctype.lower():
        raise ApiError(415, f"expected a JSON body (Content-Type: application/json), got {ctype!r}", None)
    raw = await _read_body(request, limit)
    if not raw.strip():
        raise ApiError(400, "empty request body: expected a JSON object", None, "invalid_json")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise ApiError(400, f"request body is not valid JSON ({msg})", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", None, "invalid_json")
    return body


async def _read_form(request: Request, limit: int) -> FormData:
    ctype = request.headers.get("content-type", "")
    raw = await _read_body(request, limit)

    async def stream():  # noqa: ANN202
        yield raw
        yield b""

    try:
        if ctype.startswith("multipart/form-data"):
            return await _InMemoryMultiPart(request.headers, stream(), max_files=8, max_fields=64).parse()
        if ctype.startswith("application/x-www-form-urlencoded"):
            return await FormParser(request.headers, stream()).parse()
    except MultiPartException as exc:
        raise ApiError(400, f"malformed multipart body ({exc.message})", None, "invalid_form") from None
    raise ApiError(
        415, f"expected multipart/form-data, got {ctype or 'no Content-Type'}", None, "invalid_form"
    )


def _form_value(form: FormData, name: str, kind: type = str) -> Any:
    """A text field converted to `kind` (None when absent or empty); 422 naming the field."""
    v = form.get(name)
    if v is None:
        return None
    if isinstance(v, UploadFile):
        raise ApiError(422, f"{name}: must be a text field, not a file", name, "invalid_value")
    v = v.strip()
    if v == "":
        return None
    if kind is int:
        try:
            return int(v)
        except ValueError:
            raise ApiError(422, f"{name}: must be an integer (got {v!r})", name, "invalid_value") from None
    if kind is float:
        try:
            return float(v)
        except ValueError:
            raise ApiError(422, f"{name}: must be a number (got {v!r})", name, "invalid_value") from None
    return v


async def _upload(service: Service, form: FormData, name: str) -> AudioArray | None:
    """The audio of file field `name`, decoded in memory (None when absent)."""
    v = form.get(name)
    if v is None:
        return None
    if not isinstance(v, UploadFile):
        raise ApiError(422, f"{name}: must be an uploaded audio file", name, "invalid_audio")
    try:
        data = await v.read()
    finally:
        await v.close()
    try:
        audio = await asyncio.to_thread(media.decode_upload, data, name)
    except MetisError as exc:
        raise from_metis(exc, name) from None
    secs = media.seconds(audio)
    if secs > service.limits.max_audio_seconds:
        raise ApiError(
            413,
            f"{name}: {secs:.1f} s of audio (at most {service.limits.max_audio_seconds:g} s on this server)",
            name,
            "too_long",
        )
    return audio


# ---- shared checks ---------------------------------------------------------------------------------------


def _flag_param(exc: UsageError, group: type) -> str | None:
    msg = str(exc)
    for f in fields(group):
        flag = f.metadata.get("flag")
        if flag and msg.startswith(flag + ":"):
            return f.name
    return None


def _decoding(service: Service, task: str, values: dict[str, Any]) -> Any:
    """Validated decoding overrides → the pipeline's `Decoding` (422 naming the field)."""
    values = {k: v for k, v in values.items() if v is not None}
    try:
        (opts,) = O.split(values, [O.DecodingOptions]).values()
    except UsageError as exc:
        param = _flag_param(exc, O.DecodingOptions)
        raise ApiError(
            422, field_message(exc, param) if param else str(exc), param, "invalid_value"
        ) from None
    limit = service.limits.max_steps
    if opts.steps is not None and opts.steps > limit:
        raise ApiError(
            422, f"steps: must be <= {limit} on this server (got {opts.steps})", "steps", "invalid_value"
        )
    for sched in O.parse_s2a_steps(opts.s2a_steps).values():
        if max(sched) > limit:
            raise ApiError(
                422, f"s2a_steps: must be <= {limit} on this server (got {opts.s2a_steps})", "s2a_steps",
                "invalid_value",
            )  # fmt: skip
    pipe = service.pipelines[task]
    return pipe._decoding(**{k: getattr(opts, k) for k in O.names(O.DecodingOptions)})


def _seed(value: Any) -> int | None:
    if value is None:
        return None
    try:
        O.validate(O.JobDefaults(seed=value))
    except UsageError as exc:
        raise ApiError(422, field_message(exc, "seed"), "seed", "invalid_value") from None
    return value


def _language(value: Any, name: str = "language") -> str | None:
    if value is None:
        return None
    if value not in O.LANGUAGE_CHOICES:
        raise ApiError(
            422,
            f"{name}: must be one of {', '.join(O.LANGUAGE_CHOICES)} (got {value!r})",
            name,
            "invalid_value",
        )
    return value


def _text(service: Service, value: Any, name: str) -> str:
    if value is None:
        raise ApiError(422, f"missing field: {name}", name, "missing_field")
    if not isinstance(value, str):
        raise ApiError(422, f"{name}: must be a string (got {type(value).__name__})", name, "invalid_value")
    limit = service.limits.max_text_chars
    if len(value) > limit:
        raise ApiError(
            413, f"{name} is {len(value)} characters long (at most {limit} on this server)", name, "too_long"
        )
    try:
        return J.check_text(value, name)
    except MetisError as exc:
        raise ApiError(422, str(exc), name, "invalid_value") from None


def _format(service: Service, value: Any, default: str) -> str:
    fmt = default if value is None else value
    if fmt not in service.formats:
        raise ApiError(
            422,
            f"response_format: must be one of {', '.join(service.formats)} (got {fmt!r})",
            "response_format",
            "invalid_value",
        )
    return fmt


def _voice(service: Service, key: Any, param: str = "voice") -> Any:
    if not isinstance(key, str) or not key:
        raise ApiError(422, f"{param}: must be the name or id of a registered voice", param, "invalid_value")
    voice = service.voices.get(key)
    if voice is None:
        known = ", ".join(service.voices.names()) or "none registered"
        raise ApiError(404, f"{param}: no voice named {key!r} (voices: {known})", param, "voice_not_found")
    return voice


def _make_job(task: str, inputs: dict[str, Any], **kw: Any) -> Any:
    try:
        return J.make_job(task, inputs, Path("response.wav"), **kw)
    except MetisError as exc:
        raise from_metis(exc) from None


async def _run(service: Service, request: Request, task: str, job: Any, decoding: Any, fmt: str) -> Response:
    """Queue the job, wait for its batch, answer with the audio (or the job's error)."""
    batcher = service.batcher(task)
    rid = request.scope.get("state", {}).get("request_id", "?")
    deadline = time.monotonic() + service.config.request_timeout
    try:
        res, work = await batcher.submit(job, decoding, deadline, rid, request.is_disconnected)
    except QueueFull as exc:
        raise ApiError(
            429, f"the {task} queue is full ({batcher.max_queue} waiting); retry later", None, "queue_full",
            {"Retry-After": str(exc.retry_after)},
        ) from None  # fmt: skip
    except DeadlineExceeded:
        raise ApiError(
            504, f"not finished within {service.config.request_timeout:g} s", None, "timeout"
        ) from None
    except ClientGone:
        return Response(status_code=499)
    except NotReady as exc:
        raise ApiError(503, str(exc), None, "not_ready") from None
    except BatchFailed as exc:
        raise ApiError(500, str(exc), None, "generation_failed") from None
    m = service.metrics
    if res.audio_seconds:
        m.audio_in.labels(task).inc(res.audio_seconds)
    if not res.ok:
        m.jobs.labels(task, "error").inc()
        raise from_job_error(res.error, res.error_type)
    m.jobs.labels(task, "ok").inc()
    m.audio_out.labels(task).inc(len(res.wav) / CODEC_SAMPLE_RATE)
    content = await asyncio.to_thread(media.encode, res.wav, fmt)
    headers = {
        "X-Metis-Seed": str(job.seed),
        "X-Metis-Steps": str(decoding.steps),
        "X-Metis-Model": service.pipelines[task].engine.card.name,
        "X-Metis-Processing-Seconds": f"{res.seconds:.3f}",
        "X-Metis-Queue-Seconds": f"{work.queue_seconds:.3f}",
        "X-Metis-Batch-Size": str(work.batch_size),
        "X-Metis-Output-Seconds": f"{len(res.wav) / CODEC_SAMPLE_RATE:.3f}",
        "Content-Disposition": f'inline; filename="metis-{task}.{"raw" if fmt == "pcm" else fmt}"',
        "Access-Control-Expose-Headers": "X-Metis-Seed, X-Metis-Steps, X-Metis-Processing-Seconds",
    }
    if res.audio_seconds is not None:
        headers["X-Metis-Audio-Seconds"] = f"{res.audio_seconds:.3f}"
    if res.info.get("chunks"):  # a long input, generated chunk by chunk (docs/LONGFORM.md)
        headers["X-Metis-Chunks"] = str(res.info["chunks"])
    return Response(content, media_type=media.media_type(fmt), headers=headers)


# ---- endpoints -------------------------------------------------------------------------------------------


def _routes(app: FastAPI, service: Service) -> None:
    limits = service.limits

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        tasks = {}
        for t, b in service.batchers.items():
            state = (
                "failed"
                if b.load_error
                else ("full" if b.full else ("ready" if b.ready.is_set() else "loading"))
            )
            tasks[t] = state
        ok = all(s == "ready" for s in tasks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "tasks": tasks}, status_code=200 if ok else 503
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        for t, b in service.batchers.items():
            service.metrics.queue_depth.labels(t).set(b.depth)
        body, ctype = service.metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = []
        for t, pipe in service.pipelines.items():
            data.append({"id": pipe.engine.card.name, "object": "model", "owned_by": "metis", "task": t})
        return {"object": "list", "data": data}

    @app.post("/v1/audio/speech")
    async def speech(request: Request) -> Response:
        body = await _read_json(request, limits.max_upload_bytes)
        unknown = sorted(k for k in body if k not in SPEECH_FIELDS)
        if unknown:
            raise ApiError(422, f"unknown field(s): {', '.join(unknown)}", unknown[0], "unknown_field")
        missing = [k for k in ("model", "input", "voice") if body.get(k) is None]
        if missing:
            raise ApiError(422, f"missing field(s): {', '.join(missing)}", missing[0], "missing_field")
        if "tts" not in service.pipelines:
            service.batcher("tts")
        card = service.pipelines["tts"].engine.card.name
        model = body["model"]
        if model not in (card, *OPENAI_TTS_MODELS):
            raise ApiError(
                404, f"model: no model {model!r} (use {card} or one of {', '.join(OPENAI_TTS_MODELS)})",
                "model", "model_not_found",
            )  # fmt: skip
        if body.get("stream_format") not in (None, "audio"):
            raise ApiError(422, "stream_format: only 'audio' is supported", "stream_format", "invalid_value")
        text = _text(service, body["input"], "input")
        voice = _voice(service, body["voice"])
        fmt = _format(service, body.get("response_format"), "mp3" if "mp3" in service.formats else "wav")
        dec = _decoding(service, "tts", {k: body.get(k) for k in DECODING_FIELDS})
        seed = _seed(body.get("seed"))
        language = _language(body.get("language"))
        duration = _duration(body.get("duration"))
        speed = body.get("speed", 1.0)
        if speed is None:
            speed = 1.0
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
            raise ApiError(
                422, f"speed: must be a number within 0.25-4.0 (got {speed!r})", "speed", "invalid_value"
            )
        if speed != 1.0:
            if duration is not None:
                raise ApiError(422, "speed: give speed or duration, not both", "speed", "invalid_value")
            duration = _speed_duration(media.seconds(voice.audio), voice.text, text, speed)
        job = _make_job(
            "tts", {"prompt": voice.audio}, seed=seed, text=text, prompt_text=voice.text,
            language=language, prompt_language=voice.language, duration=duration,
        )  # fmt: skip
        return await _run(service, request, "tts", job, dec, fmt)

    async def audio_task(request: Request, route: str) -> Response:
        task = ROUTES[route]
        service.batcher(task)  # 404 / 503 before reading the body
        form = await _read_form(request, limits.max_upload_bytes)
        spec = TASKS[task]
        known = set(spec.inputs) | set(DECODING_FIELDS) | {"seed", "response_format", "voice"}
        if task == "tts":
            known |= {"text", "prompt_text", "language", "prompt_language", "duration"}
        unknown = sorted(k for k in form.keys() if k not in known)
        if unknown:
            raise ApiError(422, f"unknown field(s): {', '.join(unknown)}", unknown[0], "unknown_field")
        fmt = _format(service, _form_value(form, "response_format"), "wav")
        dec = _decoding(service, task, {k: _form_value(form, k, kind) for k, kind in DECODING_FIELDS.items()})
        seed = _seed(_form_value(form, "seed", int))
        inputs: dict[str, Any] = {}
        voice = None
        voice_key = _form_value(form, "voice")
        if voice_key is not None:
            if task not in VOICE_ROLE:
                raise ApiError(422, f"voice: {route} takes no voice", "voice", "invalid_value")
            voice = _voice(service, voice_key)
            if form.get(VOICE_ROLE[task]) is not None:
                raise ApiError(
                    422, f"give {VOICE_ROLE[task]} or voice, not both", VOICE_ROLE[task], "invalid_value"
                )
            inputs[VOICE_ROLE[task]] = voice.audio
        for role in spec.inputs:
            if role in inputs:
                continue
            audio = await _upload(service, form, role)
            if audio is None:
                raise ApiError(422, f"missing file field: {role}", role, "missing_field")
            inputs[role] = audio
        kw: dict[str, Any] = {"seed": seed}
        if task == "tts":
            kw["text"] = _text(service, _form_value(form, "text"), "text")
            prompt_text = _form_value(form, "prompt_text")
            if voice is not None:
                if prompt_text is not None:
                    raise ApiError(422, "prompt_text: a voice brings its own transcript", "prompt_text")
                kw["prompt_text"], kw["prompt_language"] = voice.text, voice.language
            else:
                kw["prompt_text"] = _text(service, prompt_text, "prompt_text")
                kw["prompt_language"] = _language(_form_value(form, "prompt_language"), "prompt_language")
            kw["language"] = _language(_form_value(form, "language"))
            kw["duration"] = _duration(_form_value(form, "duration", float))
        job = _make_job(task, inputs, **kw)
        return await _run(service, request, task, job, dec, fmt)

    for route in ROUTES:

        def make(route: str = route) -> Callable:
            async def endpoint(request: Request) -> Response:
                return await audio_task(request, route)

            endpoint.__name__ = f"post_{route}"
            return endpoint

        app.post(f"/v1/{route}")(make())

    @app.get("/v1/voices")
    async def list_voices() -> dict[str, Any]:
        return {"object": "list", "data": [v.public() for v in service.voices.list()]}

    @app.post("/v1/voices")
    async def add_voice(request: Request) -> JSONResponse:
        form = await _read_form(request, limits.max_upload_bytes)
        unknown = sorted(k for k in form.keys() if k not in ("audio", "text", "language", "name"))
        if unknown:
            raise ApiError(422, f"unknown field(s): {', '.join(unknown)}", unknown[0], "unknown_field")
        audio = await _upload(service, form, "audio")
        if audio is None:
            raise ApiError(422, "missing file field: audio", "audio", "missing_field")
        text = _text(service, _form_value(form, "text"), "text")
        language = _language(_form_value(form, "language"))
        name = _form_value(form, "name")
        from metis_cli.serve.voices import valid_name

        if name is not None and not valid_name(name):
            raise ApiError(
                422, "name: 1-64 letters, digits, '_', '.', '-' (no path)", "name", "invalid_value"
            )
        try:
            voice = service.voices.add(audio, text, None if language == "auto" else language, name)
        except KeyError:
            raise ApiError(409, f"name: a voice named {name!r} exists", "name", "voice_exists") from None
        except OverflowError as exc:
            raise ApiError(409, str(exc), None, "too_many_voices") from None
        return JSONResponse(voice.public(), status_code=201)

    @app.get("/v1/voices/{voice_id}")
    async def get_voice(voice_id: str) -> dict[str, Any]:
        return _voice(service, voice_id, "voice_id").public()

    @app.delete("/v1/voices/{voice_id}")
    async def delete_voice(voice_id: str) -> dict[str, Any]:
        try:
            voice = service.voices.delete(voice_id)
        except KeyError:
            raise ApiError(
                404, f"voice_id: no uploaded voice {voice_id!r}", "voice_id", "voice_not_found"
            ) from None
        except PermissionError:
            raise ApiError(
                403, f"voice_id: {voice_id!r} comes from the server's voices file", "voice_id", "read_only"
            ) from None
        return {"id": voice.id, "object": "voice", "deleted": True}


def _duration(value: Any) -> float | None:
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 0 < value <= O.MAX_DURATION_SECONDS:
        raise ApiError(
            422,
            f"duration: must be within 0-{O.MAX_DURATION_SECONDS:g} s (got {value!r})",
            "duration",
            "invalid_value",
        )
    return float(value)


def _speed_duration(prompt_seconds: float, prompt_text: str, text: str, speed: float) -> float:
    """The length rule's duration (prompt seconds × UTF-8 byte ratio, as `text.target_length`) / speed."""
    rule = prompt_seconds * len(text.encode("utf-8")) / max(len(prompt_text.encode("utf-8")), 1)
    return min(max(rule / speed, 0.1), O.MAX_DURATION_SECONDS)

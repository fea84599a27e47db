"""What the endpoints share: the pipelines' batchers, the voices, the metrics, and the checks
and the answer every generation request goes through (`Service.answer`)."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from metis_cli import api, jobs, options
from metis_cli.api import PromptCache, content_hash
from metis_cli.constants import CODEC_SAMPLE_RATE
from metis_cli.errors import MetisError
from metis_cli.serve import media
from metis_cli.serve.batcher import Batcher, BatchFailed, ClientGone, DeadlineExceeded, NotReady, QueueFull
from metis_cli.serve.config import ServeConfig
from metis_cli.serve.errors import ApiError, from_job_error, from_metis
from metis_cli.serve.metrics import Metrics
from metis_cli.serve.streaming import stream_answer
from metis_cli.serve.voices import Voice, VoiceStore

log = logging.getLogger("metis.serve")

EXPOSED_HEADERS = (  # the response headers a page on another origin may read (CORS)
    "X-Metis-Seed", "X-Metis-Steps", "X-Metis-Model", "X-Metis-Processing-Seconds", "X-Metis-Queue-Seconds",
    "X-Metis-Batch-Size", "X-Metis-Output-Seconds", "X-Metis-Audio-Seconds", "X-Metis-Chunks",
    "X-Metis-First-Audio-Seconds",
)  # fmt: skip


class Service:
    """Everything the endpoints share (`request.app.state.service`)."""

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
            self.voices.load_file(config.voices_file, self.limits.max_voice_seconds)
        self.voices.load_folder()
        locks: dict[str, threading.Lock] = {}
        self.batchers: dict[str, Batcher] = {}
        for task, pipe in pipelines.items():
            self.metrics.declare(task)
            self.batchers[task] = Batcher(
                task,
                pipe,
                max_batch=config.max_batch,
                max_wait_ms=config.max_wait_ms,
                max_queue=config.max_queue,
                metrics=self.metrics,
                device_lock=locks.setdefault(str(pipe.device), threading.Lock()),
                on_fatal=on_fatal,
            )
        self.formats = media.response_formats()
        # speaker prompts encoded once, shared by every pipeline (each entry is keyed by model,
        # dtype and device); registered voices stay pinned, and persisted beside their audio
        self.prompt_cache = PromptCache(persist_dir=config.voices_dir)
        self.prompt_cache.on_event = lambda event: self.metrics.prompt_cache.labels(event).inc()
        self._voice_hashes: dict[str, str] = {}
        for pipe in pipelines.values():
            if hasattr(pipe, "prompt_cache"):
                pipe.prompt_cache = self.prompt_cache
        self.on_stream_end: Callable[[str, str], None] | None = None  # (request id, outcome); for tests
        self.text_ready = threading.Event()  # TTS: the text front ends loaded (`warm_text`)
        self.abandon = False  # a forced stop: the app's shutdown does not wait for queued jobs
        self.frontend_problems: dict[str, str] = {}
        if "tts" in pipelines:
            problems = {lang: api.text_frontend_problem(lang) for lang in api.FRONTEND_MODULES}
            self.frontend_problems = {lang: p for lang, p in problems.items() if p is not None}
        else:
            self.text_ready.set()

    def warm_text(self) -> None:
        """Load the language detector and the front ends usable here (zh) before the first
        request needs them; a front end that fails to load is one more problem, not a crash."""
        if "tts" not in self.pipelines:
            return
        try:
            api.text_language("Hello there.")
            for lang in api.FRONTEND_MODULES:
                if lang not in self.frontend_problems:
                    try:
                        api.warm_text_frontend(lang)
                    except MetisError as exc:
                        self.frontend_problems[lang] = f"{lang}: {exc}"
            for lang, problem in self.frontend_problems.items():
                log.warning("TTS in %s is unavailable: %s", lang, problem)
        finally:
            self.text_ready.set()

    def check_frontends(self, *texts: tuple[str, str | None]) -> None:
        """503 naming the fix when a (text, language) needs a front end this server lacks: the
        server never downloads one inside a request."""
        if not self.frontend_problems:
            return
        for text, language in texts:
            for lang in sorted(api.needs_frontend(text, language) & set(self.frontend_problems)):
                raise ApiError(503, self.frontend_problems[lang], None, "frontend_missing")

    def batcher(self, task: str) -> Batcher:
        """The task's batcher: 404 when it is not served, 503 when its models failed to load."""
        b = self.batchers.get(task)
        if b is None:
            served = ", ".join(self.batchers) or "none"
            raise ApiError(
                404, f"task '{task}' is not served here (serving: {served})", None, "task_not_served"
            )
        if b.load_error is not None:
            raise ApiError(503, b.load_error, None, "not_ready")
        return b

    # -- checks that depend on this server's settings -------------------------------------------------
    def text(self, value: str | None, name: str) -> str:
        """A TTS text: present, within --max-text-chars (413), with letters (422)."""
        if value is None:
            raise ApiError(422, f"missing field: {name}", name, "missing_field")
        limit = self.limits.max_text_chars
        if len(value) > limit:
            raise ApiError(
                413,
                f"{name} is {len(value)} characters long (at most {limit} on this server)",
                name,
                "too_long",
            )
        try:
            return jobs.check_text(value, name)
        except MetisError as exc:
            raise ApiError(422, str(exc), name, "invalid_value") from None

    def max_duration(self, text: str) -> float:
        """The longest `duration` a TTS request for `text` may ask for: --max-duration per
        sentence piece of at most --max-chars characters (the pieces the long-text path speaks)."""
        max_chars = (
            self.config.load_options.get("max_chars")
            or options.defaults(options.LongformOptions)["max_chars"]
        )
        pieces = max(1, math.ceil(len(text) / max_chars))
        return min(self.limits.max_duration * pieces, options.MAX_DURATION_SECONDS)

    def duration(self, value: float | None, text: str) -> float | None:
        """A requested TTS duration within `max_duration(text)` (422 naming `duration`)."""
        limit = self.max_duration(text)
        if value is not None and value > limit:
            raise ApiError(
                422, f"duration: must be <= {limit:g} s for this text on this server (got {value:g})",
                "duration", "invalid_value",
            )  # fmt: skip
        return value

    def format(self, fmt: str) -> str:
        if fmt not in self.formats:
            raise ApiError(
                422,
                f"response_format: must be one of {', '.join(self.formats)} (got {fmt!r})",
                "response_format",
                "invalid_value",
            )
        return fmt

    def voice(self, key: str, param: str = "voice") -> Voice:
        """A registered voice by name or id (404 naming `param`); its prompt encoding is pinned in
        the prompt cache (made at its first use, then kept, and persisted with --voices-dir)."""
        voice = self.voices.get(key)
        if voice is None:
            known = ", ".join(self.voices.names()) or "none registered"
            raise ApiError(
                404, f"{param}: no voice named {key!r} (voices: {known})", param, "voice_not_found"
            )
        if voice.id not in self._voice_hashes:
            digest = content_hash(voice.audio)
            if digest is not None:
                self._voice_hashes[voice.id] = digest
                self.prompt_cache.pin(digest)
        return voice

    def forget_voice(self, voice: Voice) -> None:
        """A deleted voice: drop its pinned encodings (memory and --voices-dir)."""
        digest = self._voice_hashes.pop(voice.id, None)
        if digest is not None and digest not in self._voice_hashes.values():
            self.prompt_cache.unpin(digest)

    def decoding(self, task: str, overrides: dict[str, Any]) -> Any:
        """The pipeline's resolved decoding settings with a request's overrides (422 naming the
        field; steps above --max-steps included)."""
        limit = self.limits.max_steps
        steps = overrides.get("steps")
        if steps is not None and steps > limit:
            raise ApiError(
                422, f"steps: must be <= {limit} on this server (got {steps})", "steps", "invalid_value"
            )
        try:
            dec = self.pipelines[task].decoding(**overrides)
        except MetisError as exc:
            param = next((k for k in overrides if str(exc).startswith(("--" + k.replace("_", "-"), k))), None)
            raise from_metis(exc, param) from None
        if "s2a_steps" in overrides and max(max(dec.s2a_steps_1layer), max(dec.s2a_steps_full)) > limit:
            raise ApiError(
                422, f"s2a_steps: must be <= {limit} on this server (got {overrides['s2a_steps']})",
                "s2a_steps", "invalid_value",
            )  # fmt: skip
        return dec

    # -- running ---------------------------------------------------------------------------------------
    async def answer(
        self,
        request: Request,
        task: str,
        job: Any,
        decoding: Any,
        fmt: str,
        stream_format: str | None = None,
    ) -> Response:
        """Queue the job, wait for its batch, answer with the audio (or the job's error);
        `stream_format` "audio" / "sse": a streamed answer (`streaming.stream_answer`)."""
        if stream_format is not None:
            return await stream_answer(self, request, task, job, decoding, fmt, stream_format)
        res, work = await self._submit(request, task, job, decoding)
        if res is None:
            return Response(status_code=499)
        m = self.metrics
        if res.audio_seconds:
            m.audio_in.labels(task).inc(res.audio_seconds)
        if not res.ok:
            m.jobs.labels(task, "error").inc()
            raise from_job_error(res.error, res.error_type)
        m.jobs.labels(task, "ok").inc()
        seconds = len(res.wav) / CODEC_SAMPLE_RATE
        m.audio_out.labels(task).inc(seconds)
        content = await asyncio.to_thread(media.encode, res.wav, fmt)
        headers = {
            "X-Metis-Seed": str(job.seed),
            "X-Metis-Steps": str(decoding.steps),
            "X-Metis-Model": self.pipelines[task].model_name,
            "X-Metis-Processing-Seconds": f"{res.seconds:.3f}",
            "X-Metis-Queue-Seconds": f"{work.queue_seconds:.3f}",
            "X-Metis-Batch-Size": str(work.batch_size),
            "X-Metis-Output-Seconds": f"{seconds:.3f}",
            "Content-Disposition": f'inline; filename="metis-{task}.{media.extension(fmt)}"',
        }
        if res.audio_seconds is not None:
            headers["X-Metis-Audio-Seconds"] = f"{res.audio_seconds:.3f}"
        if res.info.get("chunks"):  # a long input, generated chunk by chunk (docs/LONGFORM.md)
            headers["X-Metis-Chunks"] = str(res.info["chunks"])
        return Response(content, media_type=media.media_type(fmt), headers=headers)

    async def _submit(self, request: Request, task: str, job: Any, decoding: Any) -> tuple[Any, Any]:
        """(result, work), or (None, None) when the client left; errors as ApiErrors."""
        batcher = self.batcher(task)
        rid = request.scope.get("state", {}).get("request_id", "?")
        deadline = time.monotonic() + self.config.request_timeout
        try:
            return await batcher.submit(job, decoding, deadline, rid, request.is_disconnected)
        except QueueFull as exc:
            msg = f"the {task} queue is full ({batcher.max_queue} waiting); retry later"
            raise ApiError(429, msg, None, "queue_full", {"Retry-After": str(exc.retry_after)}) from None
        except DeadlineExceeded:
            raise ApiError(
                504, f"not finished within {self.config.request_timeout:g} s", None, "timeout"
            ) from None
        except ClientGone:
            return None, None
        except NotReady as exc:
            raise ApiError(503, str(exc), None, "not_ready") from None
        except BatchFailed as exc:
            raise ApiError(500, str(exc), None, "generation_failed") from None


def make_job(task: str, inputs: dict[str, Any], **kw: Any) -> Any:
    """A job of the job layer (its validation and wording); 422 naming the field."""
    try:
        return jobs.make_job(task, inputs, Path("response.wav"), **kw)
    except MetisError as exc:
        raise from_metis(exc) from None

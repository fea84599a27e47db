"""The FastAPI app of `metis serve`: routers per API surface, a gate, errors in the OpenAI shape.

Every request body is a typed request model (`serve.requests`: bounds from `options`, documented
at /docs, /redoc and /openapi.json); every generation becomes a `jobs.make_job` job (the CLI's
validation and wording) run in its pipeline's `Batcher`. Uploads are read into memory (bounded
by `Limits.max_upload_bytes`) and decoded there; nothing a client sends is used as a path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles

from metis_cli import __version__
from metis_cli.errors import UsageError
from metis_cli.serve.bodies import ClientLeft
from metis_cli.serve.config import ServeConfig
from metis_cli.serve.errors import ApiError
from metis_cli.serve.routers import speech, system, tasks, voices
from metis_cli.serve.service import EXPOSED_HEADERS, Service

log = logging.getLogger("metis.serve")

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
PUBLIC_PATHS = ("/", "/healthz", "/readyz", "/favicon.ico", "/docs", "/redoc", "/openapi.json")
ENDPOINTS = {
    "/v1/audio/speech", "/v1/tts", "/v1/enhance", "/v1/tse", "/v1/vc", "/v1/voices", "/v1/models",
    "/v1/audio/voices", "/healthz", "/readyz", "/metrics", "/", "/docs", "/redoc", "/openapi.json",
}  # fmt: skip


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
            t: load(t, **{**config.load_options, "batch_size": config.max_batch}) for t in config.served_tasks
        }
    for task, pipe in pipelines.items():
        if pipe.batch_size < config.max_batch:
            raise UsageError(f"{task}: the pipeline's batch size {pipe.batch_size} is below --max-batch")
    service = Service(config, pipelines, on_fatal)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        for b in service.batchers.values():
            b.start()
        threading.Thread(target=service.warm_text, name="metis-serve-text", daemon=True).start()
        try:
            yield
        finally:
            for b in service.batchers.values():
                await asyncio.to_thread(b.stop, 0.0 if service.abandon else 60.0)

    app = FastAPI(
        title="metis",
        version=__version__,
        lifespan=lifespan,
        description="Speech generation with the Metis models: OpenAI-compatible speech, enhancement, "
        "target speaker extraction, voice conversion, registered voices. Errors: "
        '{"error": {"message", "type", "param", "code"}}.',
    )
    app.state.service = service
    app.add_middleware(_Gate, service=service)
    if config.origins:  # outside the gate: a preflight never needs the API key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.origins),
            allow_methods=["GET", "HEAD", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
            expose_headers=[*EXPOSED_HEADERS, "X-Request-Id", "Retry-After"],
            max_age=600,
        )
    _handlers(app)
    for module in (system, speech, tasks, voices):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=system.STATIC), name="static")
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
        status = {"code": 500, "started": False}
        t0 = time.perf_counter()

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
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
        except asyncio.CancelledError:  # a forced shutdown: answer what can still be answered
            if not status["started"]:
                err = ApiError(503, "the server is shutting down; retry later", None, "shutting_down")
                with contextlib.suppress(Exception):  # the connection may be gone too
                    await _error_response(err)(scope, receive, send_with_id)
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
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
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

    @app.exception_handler(ClientLeft)
    async def client_left(request: Request, exc: ClientLeft) -> JSONResponse:
        return JSONResponse({}, status_code=499)  # nobody reads it

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        rid = request.scope.get("state", {}).get("request_id", "?")
        log.error("%s: internal error: %s", rid, type(exc).__name__, exc_info=exc)
        return _error_response(ApiError(500, f"internal error (request id {rid})", None, "internal_error"))

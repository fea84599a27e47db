"""The page, health, readiness and metrics."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from metis_cli.serve.routers import service_of

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["system"])


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", summary="The process is up (also HEAD)")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Every pipeline's models are loaded (503 until then)")
async def readyz(request: Request) -> JSONResponse:
    tasks = {}
    service = service_of(request)
    for task, b in service.batchers.items():
        if b.load_error:
            tasks[task] = "failed"
        else:
            loaded = b.ready.is_set() and (task != "tts" or service.text_ready.is_set())
            tasks[task] = "full" if b.full else ("ready" if loaded else "loading")
    ok = all(s == "ready" for s in tasks.values())
    return JSONResponse(
        {"status": "ready" if ok else "not ready", "tasks": tasks}, status_code=200 if ok else 503
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    service = service_of(request)
    for task, b in service.batchers.items():
        service.metrics.queue_depth.labels(task).set(b.depth)
    body, ctype = service.metrics.render()
    return Response(body, media_type=ctype)

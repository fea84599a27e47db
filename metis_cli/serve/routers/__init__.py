"""The endpoints, one router per API surface:

    system.py   /, /healthz, /readyz, /metrics
    speech.py   /v1/audio/speech (OpenAI), /v1/models
    tasks.py    /v1/enhance, /v1/tse, /v1/vc, /v1/tts (multipart uploads)
    voices.py   /v1/voices (and /v1/audio/voices)

Handlers find the shared `service.Service` in `request.app.state.service`.
"""

from __future__ import annotations

from starlette.requests import Request

from metis_cli.serve.service import Service


def service_of(request: Request) -> Service:
    return request.app.state.service


__all__ = ["service_of"]

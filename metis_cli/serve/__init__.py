"""`metis serve`: a warm speech service on the job layer (docs: README "Service").

    config.py    ServeConfig and Limits (what the command line sets)
    app.py       the FastAPI app: endpoints, auth, request ids, errors in the OpenAI shape
    batcher.py   dynamic batching: one worker thread per pipeline, one padded batch per group
    voices.py    registered voices (voices.json, uploads kept in memory or in a folder)
    media.py     uploads decoded in memory; responses encoded in memory
    metrics.py   Prometheus metrics
    client.py    `metis tts|vc|tse|enhance --server URL`: run a plan against a running service
    static/      the web page at `/` (plain HTML + JS)

Needs the optional extra `metis-cli[serve]` (FastAPI, uvicorn, python-multipart,
prometheus-client, httpx). Nothing here is imported by the rest of the package.
"""

from __future__ import annotations

from metis_cli.serve.config import Limits, ServeConfig

__all__ = ["Limits", "ServeConfig", "create_app"]


def create_app(*args, **kwargs):  # noqa: ANN002, ANN003 - a lazy re-export (FastAPI is optional)
    from metis_cli.serve.app import create_app as _create

    return _create(*args, **kwargs)

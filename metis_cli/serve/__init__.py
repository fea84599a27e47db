"""`metis serve`: a warm speech service on the Python API (docs/SERVICE.md).

    config.py    ServeConfig: options.ServeOptions + options.ServeLimits + api.load keywords
    app.py       the FastAPI app: the gate (request ids, auth, metrics), errors, CORS
    routers/     one router per API surface: system, speech (OpenAI), tasks, voices
    requests.py  Pydantic request models (ranges from options.py), validation messages, OpenAPI
    bodies.py    request bodies read in memory, bounded in size and time
    service.py   what the endpoints share: batchers, voices, checks, the audio answer
    batcher.py   dynamic batching: one worker thread per pipeline, one padded batch per group;
                 stepped works (streams, long inputs) one block per turn, round robin
    streaming.py stream_format "audio" / "sse": answers sent as they are made
    ray_serve.py `metis serve --ray`: the same app as a Ray Serve deployment
    voices.py    registered voices (voices.json, uploads kept in memory or in a folder)
    media.py     uploads decoded in memory; responses encoded (metis_cli.media.encode)
    metrics.py   Prometheus metrics
    server.py    uvicorn with timeouts for slow, idle and stopped clients
    client.py    `metis tts|vc|tse|enhance --server URL`: run a plan against a running service
    static/      the web page at `/` (plain HTML + JS)

Needs the optional extra `metis-cli[serve]` (FastAPI, uvicorn, python-multipart,
prometheus-client, httpx, av). Nothing here is imported by the rest of the package.
"""

from __future__ import annotations

from metis_cli.serve.config import Limits, ServeConfig

__all__ = ["Limits", "ServeConfig", "create_app"]


def create_app(*args, **kwargs):  # noqa: ANN002, ANN003 - a lazy re-export (FastAPI is optional)
    from metis_cli.serve.app import create_app as _create

    return _create(*args, **kwargs)

"""`metis serve`: a warm speech service (metis_cli/serve; README "Service").

The engine, model and decoding options are generated from `metis_cli.options` like every task
command's; the decoding options set the service's defaults (each request may override them).
Exit codes: 0 after a graceful stop (SIGTERM/SIGINT: in-flight requests finish first), 1 when
a model cannot be loaded, 2 usage errors.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import typer

from metis_cli import options as O
from metis_cli.cli.params import command, group_params, param
from metis_cli.cli.report import error_line
from metis_cli.errors import MetisError, UsageError

# engine options that the service sets itself: the batch size is --max-batch; l2s is not served
_NOT_SHOWN = {"batch_size", "visual_checkpoint"}
_GROUPS = (O.ModelOptions, O.EngineOptions, O.LongformOptions, O.DecodingOptions)


def _serve(values: dict[str, Any]) -> None:
    try:
        import uvicorn

        from metis_cli.serve.config import Limits, ServeConfig, is_loopback, parse_tasks
    except ImportError as exc:
        error_line(f"metis serve needs the serve extra: pip install 'metis-cli[serve]' ({exc.name} missing)")
        raise typer.Exit(2) from None
    from metis_cli.cli.logs import configure

    option_values = {k: v for k, v in values.items() if k in {n for g in _GROUPS for n in O.names(g)}}
    O.split(option_values, _GROUPS)  # every engine/decoding option checked before anything loads
    api_key = values["api_key"] or None
    host = values["host"]
    if api_key is None and not values["no_auth"] and not is_loopback(host):
        raise UsageError(
            f"--host {host}: binding a non-loopback address needs --api-key (or METIS_API_KEY); "
            "give --no-auth to serve without authentication"
        )
    if values["max_upload_mb"] is None or not values["max_upload_mb"] > 0:
        raise UsageError(f"--max-upload-mb: must be > 0 (got {values['max_upload_mb']})")
    limits = Limits(
        max_upload_bytes=int(values["max_upload_mb"] * 1024 * 1024),
        max_audio_seconds=values["max_audio_seconds"],
        max_text_chars=values["max_text_chars"],
        max_steps=values["max_steps"],
    )
    load_options = dict(option_values)
    load_options["offline"] = load_options.get("offline") or None
    config = ServeConfig(
        tasks=parse_tasks(values["tasks"]),
        host=host,
        port=values["port"],
        max_batch=values["max_batch"],
        max_wait_ms=values["max_wait_ms"],
        max_queue=values["max_queue"],
        request_timeout=values["request_timeout"],
        api_key=api_key,
        voices_file=values["voices"],
        voices_dir=values["voices_dir"],
        limits=limits,
        load_options=load_options,
    ).validate()
    configure(verbose=values["verbose"])
    import logging

    for name in ("metis.serve", "metis_cli.serve"):  # one line per request and per batch
        logging.getLogger(name).setLevel(logging.DEBUG if values["verbose"] else logging.INFO)
    from metis_cli.serve.app import create_app

    server_box: list[Any] = []
    failed: list[str] = []

    def on_fatal(task: str, message: str) -> None:
        failed.append(message)
        if server_box:
            server_box[0].should_exit = True

    try:
        app = create_app(config, on_fatal=on_fatal)
    except UsageError:
        raise
    except MetisError as exc:
        error_line(str(exc))
        raise typer.Exit(1) from None
    uv_config = uvicorn.Config(
        app,
        host=host,
        port=config.port,
        log_level="debug" if values["verbose"] else "info",
        access_log=False,  # the service logs one line per request with its request id
        timeout_graceful_shutdown=None,  # drain: every in-flight request finishes
    )
    server = uvicorn.Server(uv_config)
    server_box.append(server)
    stopped: list[int] = []
    # uvicorn re-raises the signal it stopped on once it has drained: we record it and exit 0
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: stopped.append(signum))
    _stop_on_hangup(server, stopped)
    where = f"http://{_url_host(host)}:{config.port}/" if config.port else f"{host}, a free port (see below)"
    sys.stderr.write(f"metis serve: {where} (tasks: {', '.join(config.tasks)})\n")
    sys.stderr.flush()
    server.run()
    if failed:
        error_line(failed[0])
        raise typer.Exit(1)
    if not server.started and not stopped:
        raise typer.Exit(1)  # could not bind (uvicorn logged why)
    raise typer.Exit(0)


def _stop_on_hangup(server: Any, stopped: list[int]) -> None:
    """SIGHUP (a closed terminal or ssh session) and SIGQUIT drain and stop the server like
    SIGTERM (uvicorn itself handles SIGINT and SIGTERM only)."""

    def stop_like_sigterm(signum: int, frame: Any) -> None:
        stopped.append(signum)
        server.handle_exit(signum, frame)

    for sig in (signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, stop_like_sigterm)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def register(app: typer.Typer) -> None:
    params = [
        param(
            "host", str, typer.Option("127.0.0.1", "--host", help="Address to bind (default: loopback only).")
        ),
        param("port", int, typer.Option(8000, "--port", help="Port to listen on (0: any free port).")),
        param(
            "tasks",
            str,
            typer.Option("tts,se,vc,tse", "--tasks", help="Pipelines to load at start (tts, se, vc, tse)."),
        ),
        param(
            "max_batch",
            int,
            typer.Option(8, "--max-batch", help="Most jobs per padded batch (the engine's batch size)."),
        ),
        param(
            "max_wait_ms",
            float,
            typer.Option(
                20.0, "--max-wait-ms", help="How long a batch's first request waits for others (ms)."
            ),
        ),
        param(
            "max_queue",
            int,
            typer.Option(64, "--max-queue", help="Waiting requests per pipeline; beyond: 429."),
        ),
        param(
            "request_timeout",
            float,
            typer.Option(300.0, "--request-timeout", help="Seconds a request may take in all; beyond: 504."),
        ),
        param(
            "voices",
            Path | None,
            typer.Option(
                None, "--voices", help="voices.json: name -> {audio, text, language} (paths relative to it)."
            ),
        ),
        param(
            "voices_dir",
            Path | None,
            typer.Option(
                None, "--voices-dir", help="Keep uploaded voices in this folder too (reloaded at start)."
            ),
        ),
        param(
            "api_key",
            str | None,
            typer.Option(
                None, "--api-key", envvar="METIS_API_KEY", help="Require Authorization: Bearer KEY."
            ),
        ),
        param(
            "no_auth",
            bool,
            typer.Option(False, "--no-auth", help="Allow a non-loopback --host without an API key."),
        ),
        param(
            "max_upload_mb", float, typer.Option(50.0, "--max-upload-mb", help="Largest request body (MiB).")
        ),
        param(
            "max_audio_seconds",
            float,
            typer.Option(600.0, "--max-audio-seconds", help="Longest uploaded audio (seconds)."),
        ),
        param(
            "max_text_chars",
            int,
            typer.Option(2000, "--max-text-chars", help="Longest TTS text (characters)."),
        ),
        param(
            "max_steps",
            int,
            typer.Option(200, "--max-steps", help="Most decoding steps a request may ask for."),
        ),
        param("verbose", bool, typer.Option(False, "--verbose", help="Debug logging.")),
        *[p for p in group_params(_GROUPS) if p.name not in _NOT_SHOWN],
    ]
    app.command("serve")(
        command(
            _serve,
            params,
            "Run a warm speech service: OpenAI-compatible /v1/audio/speech, enhance/tse/vc/tts endpoints, "
            "dynamic batching, a web page at /.",
        )
    )


__all__ = ["register"]

"""`metis serve`: a warm speech service (metis_cli/serve; docs/SERVICE.md).

Every option is generated from `metis_cli.options`: the service's own (`ServeOptions`,
`ServeLimits`) and the engine, model and decoding options of the task commands (the decoding
options set the service's defaults; each request may override them). Exit codes: 0 after a
graceful stop (SIGTERM/SIGINT: in-flight requests finish first, within --shutdown-timeout), 1
when a model cannot be loaded or a second signal forced the stop, 2 usage errors.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import typer

from metis_cli import options
from metis_cli.cli.params import command, group_params
from metis_cli.cli.report import error_line
from metis_cli.errors import MetisError, UsageError

# engine options that the service sets itself: the batch size is --max-batch; l2s is not served
_NOT_SHOWN = {"batch_size", "visual_checkpoint"}
_LOAD_GROUPS = (options.ModelOptions, options.EngineOptions, options.LongformOptions, options.DecodingOptions)
_SERVE_GROUPS = (options.ServeOptions, options.ServeLimits)


def _config(values: dict[str, Any]) -> Any:
    """The validated `ServeConfig` of the command line (UsageError naming the flag)."""
    from metis_cli.serve.config import ServeConfig, is_loopback

    load_options = {
        k: v for k, v in values.items() if k in {n for g in _LOAD_GROUPS for n in options.names(g)}
    }
    options.split(load_options, _LOAD_GROUPS)  # every engine/decoding option checked before anything loads
    load_options["offline"] = load_options.get("offline") or None
    serve = {n: values[n] for n in options.names(options.ServeOptions)}
    serve["api_key"] = serve["api_key"] or None
    config = ServeConfig(
        **serve, limits=options.build(options.ServeLimits, values), load_options=load_options
    ).validate()
    if config.api_key is None and not config.no_auth and not is_loopback(config.host):
        raise UsageError(
            f"--host {config.host}: binding a non-loopback address needs --api-key (or METIS_API_KEY); "
            "give --no-auth to serve without authentication"
        )
    return config


def _serve(values: dict[str, Any]) -> None:
    try:
        import uvicorn  # noqa: F401

        from metis_cli.serve.app import create_app
    except ImportError as exc:
        error_line(f"metis serve needs the serve extra: pip install 'metis-cli[serve]' ({exc.name} missing)")
        raise typer.Exit(2) from None
    from metis_cli.cli.logs import configure
    from metis_cli.serve.server import server as http_server

    config = _config(values)
    configure(verbose=config.verbose)
    for name in ("metis.serve", "metis_cli.serve"):  # one line per request and per batch
        logging.getLogger(name).setLevel(logging.DEBUG if config.verbose else logging.INFO)
    if values["ray"]:
        _serve_ray(config, options.build(options.RayServeOptions, values))
    failed: list[str] = []
    server: list[Any] = []  # set once built: on_fatal may run before

    def on_fatal(task: str, message: str) -> None:
        failed.append(message)
        if server:
            server[0].should_exit = True

    try:
        app = create_app(config, on_fatal=on_fatal)
    except UsageError:
        raise
    except MetisError as exc:
        error_line(str(exc))
        raise typer.Exit(1) from None
    server.append(http_server(app, config))
    stopped: list[int] = []
    # uvicorn re-raises the signal it stopped on once it has drained: we record it and exit 0
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: stopped.append(signum))
    _stop_on_hangup(server[0], stopped)
    host = f"[{config.host}]" if ":" in config.host else config.host
    where = f"http://{host}:{config.port}/" if config.port else f"{config.host}, a free port (see below)"
    sys.stderr.write(f"metis serve: {where} (tasks: {', '.join(config.served_tasks)})\n")
    sys.stderr.flush()
    server[0].run()
    if failed:
        error_line(failed[0])
        raise typer.Exit(1)
    if not server[0].started and not stopped:
        raise typer.Exit(1)  # could not bind (uvicorn logged why)
    if server[0].force_exit:  # a second signal: requests in flight were answered 503, not finished
        error_line("stopped by a second signal before the requests in flight finished")
        raise typer.Exit(1)
    raise typer.Exit(0)


def _serve_ray(config: Any, ray: Any) -> None:
    """`--ray`: the same app on Ray Serve replicas; serves until interrupted (exit 0)."""
    from metis_cli.serve import ray_serve

    if config.port == 0:
        raise UsageError("--port: give a port with --ray (Ray's proxy does not pick a free one)")
    url = ray_serve.start(
        config, ray.replicas, ray.ray_address, ray.cpus_per_replica, ray.gpus_per_replica, blocking=False
    )
    sys.stderr.write(f"metis serve --ray: {url}/ (tasks: {', '.join(config.served_tasks)})\n")
    sys.stderr.flush()
    try:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        ray_serve.stop()
    raise typer.Exit(0)


def _stop_on_hangup(server: Any, stopped: list[int]) -> None:
    """SIGHUP (a closed terminal or ssh session) and SIGQUIT drain and stop the server like
    SIGTERM (uvicorn itself handles SIGINT and SIGTERM only)."""

    def stop_like_sigterm(signum: int, frame: Any) -> None:
        stopped.append(signum)
        server.handle_exit(signum, frame)

    for sig in (signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, stop_like_sigterm)


def register(app: typer.Typer) -> None:
    groups = (*_SERVE_GROUPS, options.RayServeOptions, *_LOAD_GROUPS)
    params = [p for p in group_params(groups) if p.name not in _NOT_SHOWN]
    doc = (
        "Run a warm speech service: OpenAI-compatible /v1/audio/speech, enhance/tse/vc/tts endpoints, "
        "dynamic batching, a web page at /, the API documented at /docs."
    )
    app.command("serve")(command(_serve, params, doc))


__all__ = ["register"]

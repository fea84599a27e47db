"""`metis serve --ray`: the same FastAPI app as a Ray Serve deployment, one replica per GPU (or
per CPU process), each replica with its own pipelines and batchers (`app.create_app`), so the
endpoints, batching, streaming and metrics are those of `metis serve`; Ray's proxy spreads the
requests over the replicas. Every answer names its replica in `X-Metis-Replica`.

    metis serve --ray --replicas 2 --tasks tts --port 8000        # a local Ray cluster
    metis serve --ray --ray-address auto --gpus-per-replica 1      # one replica per GPU of a cluster

Needs `pip install 'metis-cli[ray-serve]'` (ray[serve]). /metrics is per replica (each answer
comes from one of them); Ray's own metrics cover the proxy.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from metis_cli.errors import UsageError
from metis_cli.serve.config import ServeConfig

log = logging.getLogger("metis.serve")

REPLICA_HEADER = b"x-metis-replica"
APP_NAME = "metis"


class ReplicaHeader:
    """ASGI middleware: every response names the replica that made it."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app = app
        self.replica = replica.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (REPLICA_HEADER, self.replica)]
            await send(message)

        await self.app(scope, receive, named)


def replica_name() -> str:
    """This replica's Ray Serve id (host:pid outside Ray)."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 - not inside a replica
        return f"{socket.gethostname()}:{os.getpid()}"


def build_app(config: ServeConfig) -> Any:
    """The service's FastAPI app, built on a replica (its models load there, in its batchers)."""
    from metis_cli.serve.app import create_app

    app = create_app(config)
    app.add_middleware(ReplicaHeader, replica=replica_name())
    return app


def deployment(
    config: ServeConfig, replicas: int, cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0
) -> Any:
    """The bound Ray Serve application: `replicas` copies of the app, each reserving the given
    CPUs and GPUs; a replica takes at most max_queue + max_batch requests at once."""
    from ray import serve

    config = config.validate()

    def builder() -> Any:
        return build_app(config)

    ingress = serve.ingress(builder)()
    options = {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica}
    return serve.deployment(
        ingress,
        name="MetisService",
        num_replicas=replicas,
        ray_actor_options=options,
        max_ongoing_requests=config.max_queue + config.max_batch,
    ).bind()


def auto_replicas(gpus_per_replica: float) -> int:
    """One replica per GPU of the cluster (by `gpus_per_replica`), else one."""
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0))
    return max(1, int(gpus // gpus_per_replica)) if gpus_per_replica > 0 and gpus else 1


def start(
    config: ServeConfig,
    replicas: int = 0,
    address: str | None = None,
    cpus_per_replica: float = 1.0,
    gpus_per_replica: float = 0.0,
    blocking: bool = False,
) -> str:
    """Connect to the Ray cluster at `address` (None: start a local one), deploy the app on
    `replicas` replicas (0: `auto_replicas`) behind Ray's HTTP proxy on config.host:port, and
    return its URL (with `blocking`, serve until interrupted)."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise UsageError(
            f"--ray needs Ray Serve: pip install 'metis-cli[ray-serve]' ({exc.name} missing)"
        ) from None
    if replicas < 0 or cpus_per_replica <= 0 or gpus_per_replica < 0:
        raise UsageError("--replicas: must be >= 0, --cpus-per-replica > 0, --gpus-per-replica >= 0")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    count = replicas or auto_replicas(gpus_per_replica)
    serve.start(http_options={"host": config.host, "port": config.port})
    app = deployment(config, count, cpus_per_replica, gpus_per_replica)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{config.host}:{config.port}"
    log.info("metis on Ray Serve: %d replica(s) at %s", count, url)
    if blocking:
        _wait_forever()
    return url


def _wait_forever() -> None:
    import threading

    threading.Event().wait()


def stop() -> None:
    """Remove the deployment and Ray Serve (the Ray cluster stays up)."""
    from ray import serve

    serve.shutdown()

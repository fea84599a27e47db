"""The HTTP server of `metis serve`: uvicorn with timeouts for slow and idle clients.

- `--body-timeout`: a connection must deliver a request's headers within this time (else it
  is closed), and then its body (else 408, `bodies.read_body`);
- `--idle-timeout`: a kept-alive connection with no new request is closed;
- `--shutdown-timeout`: on SIGTERM/SIGINT requests in flight get this long to finish; the rest
  are answered 503 (`app._Gate`), never a 500 with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from metis_cli.serve.config import ServeConfig


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers."""

    header_timeout = 60.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:  # a request's headers arrived
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the next request's headers are due

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            logging.getLogger("metis.serve").info(
                "closing a connection: no request headers within the timeout"
            )
            self.transport.close()


class Server(uvicorn.Server):
    """uvicorn's server; a forced stop (a second signal) still runs the app's shutdown, without
    waiting for queued jobs (uvicorn skips it, and the cancelled lifespan logs a traceback)."""

    async def shutdown(self, sockets: Any = None) -> None:
        await super().shutdown(sockets)
        if self.force_exit and self.config.lifespan != "off":
            service = getattr(getattr(self.config.app, "state", None), "service", None)
            if service is not None:
                service.abandon = True
            await self.lifespan.shutdown()


def server(app: Any, config: ServeConfig, log_level: str | None = None) -> uvicorn.Server:
    """A uvicorn server for `app` with the config's address and timeouts."""
    protocol = type("GuardedH11", (GuardedH11,), {"header_timeout": config.body_timeout})
    return Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=log_level or ("debug" if config.verbose else "info"),
            access_log=False,  # the service logs one line per request with its request id
            http=protocol,
            timeout_keep_alive=config.idle_timeout,  # type: ignore[arg-type]
            timeout_graceful_shutdown=config.shutdown_timeout,  # type: ignore[arg-type]
        )
    )

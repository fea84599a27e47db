"""What `metis serve` is told on its command line: `ServeConfig` = the `options.ServeOptions`
group (defaults, help and ranges written once there) + the request `Limits` + the keywords
for `api.load`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from metis_cli import options

Limits = options.ServeLimits  # per-request limits (options.ServeLimits)
SERVABLE = options.SERVABLE_TASKS
parse_tasks = options.parse_tasks


@dataclass(frozen=True)
class ServeConfig(options.ServeOptions):
    """The service's settings: every `ServeOptions` field, the limits, and the `api.load`
    keywords of its pipelines (model, engine, longform and decoding options)."""

    limits: options.ServeLimits = field(default_factory=options.ServeLimits)
    load_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> ServeConfig:
        """Every option's range (UsageError naming the flag)."""
        options.validate(self)
        options.validate(self.limits)
        return self


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the service on this machine."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

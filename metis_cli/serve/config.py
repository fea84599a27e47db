"""What `metis serve` is told on its command line: `ServeConfig` = the `options.ServeOptions`
group (defaults, help and ranges written once there) + the request `Limits` + the keywords
for `api.load`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from metis_cli import options as O

Limits = O.ServeLimits  # per-request limits (options.ServeLimits)
SERVABLE = O.SERVABLE_TASKS
parse_tasks = O.parse_tasks


@dataclass(frozen=True)
class ServeConfig(O.ServeOptions):
    """The service's settings: every `ServeOptions` field, the limits, and the `api.load`
    keywords of its pipelines (model, engine, longform and decoding options)."""

    limits: O.ServeLimits = field(default_factory=O.ServeLimits)
    load_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> ServeConfig:
        """Every option's range (UsageError naming the flag)."""
        O.validate(self)
        O.validate(self.limits)
        return self


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the service on this machine."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

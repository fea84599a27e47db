"""What `metis serve` is told on its command line: the service's settings and request limits."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metis_cli import options as O
from metis_cli.errors import UsageError

# the tasks the service can run (l2s needs video and a visual checkpoint: not served)
SERVABLE = ("tts", "se", "vc", "tse")
TASK_ALIASES = {"enhance": "se"}


@dataclass(frozen=True)
class Limits:
    """Per-request limits; each rejected with 413/422 and a one-line message."""

    max_upload_bytes: int = 50 * 1024 * 1024  # one request body (all its uploads together)
    max_audio_seconds: float = 600.0  # one decoded upload
    max_text_chars: int = 2000  # TTS text
    max_steps: int = 200  # stage-1 steps and each S2A schedule entry

    def validate(self) -> Limits:
        O.at_least(1, int)("--max-upload-mb", self.max_upload_bytes)
        O.at_least(0, float, above=True)("--max-audio-seconds", self.max_audio_seconds)
        O.at_least(1, int, O.MAX_TEXT_CHARS)("--max-text-chars", self.max_text_chars)
        O.at_least(1, int, O.MAX_STEPS)("--max-steps", self.max_steps)
        return self


@dataclass(frozen=True)
class ServeConfig:
    """The service's settings (the `metis serve` options that are not model/engine options)."""

    tasks: tuple[str, ...] = ("tts", "se", "vc", "tse")
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8  # jobs per padded batch (the engine's batch size)
    max_wait_ms: float = 20.0  # how long the first request of a batch waits for others
    max_queue: int = 64  # waiting requests per pipeline; beyond: 429
    request_timeout: float = 300.0  # seconds from arrival to the end of its batch; beyond: 504
    api_key: str | None = None  # Bearer token; None: no authentication
    voices_file: Path | None = None  # voices.json: name -> prompt audio, transcript, language
    voices_dir: Path | None = None  # keep uploaded voices in this folder too
    limits: Limits = field(default_factory=Limits)
    load_options: dict[str, Any] = field(default_factory=dict)  # api.load keywords (engine, model, ...)

    def validate(self) -> ServeConfig:
        O.at_least(1, int, O.MAX_BATCH)("--max-batch", self.max_batch)
        O.at_least(0, float, 60_000)("--max-wait-ms", self.max_wait_ms)
        O.at_least(1, int, 100_000)("--max-queue", self.max_queue)
        O.at_least(0, float, above=True)("--request-timeout", self.request_timeout)
        O.at_least(0, int, 65535)("--port", self.port)
        if not self.tasks:
            raise UsageError("--tasks: give at least one of " + ", ".join(SERVABLE))
        self.limits.validate()
        return self


def parse_tasks(value: str) -> tuple[str, ...]:
    """'tts,se' → ('tts', 'se'); 'enhance' is 'se'; unknown or unservable names: UsageError."""
    out: list[str] = []
    for raw in value.split(","):
        name = TASK_ALIASES.get(raw.strip(), raw.strip())
        if not name:
            continue
        if name not in SERVABLE:
            raise UsageError(
                f"--tasks: must be a comma-separated list of {', '.join(SERVABLE)} (got {raw!r})"
            )
        if name not in out:
            out.append(name)
    if not out:
        raise UsageError(f"--tasks: give at least one of {', '.join(SERVABLE)}")
    return tuple(out)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the service on this machine."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

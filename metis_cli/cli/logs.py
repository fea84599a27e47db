"""Logging for the CLI: stderr only; each distinct warning once; --quiet keeps errors only."""

from __future__ import annotations

import logging
import sys

# third-party loggers that warn once per word or per retry (phonemizer's "words count mismatch",
# huggingface_hub's connection retries)
NOISY = ("phonemizer", "huggingface_hub", "urllib3", "filelock")


class _CurrentStderr(logging.StreamHandler):
    """A handler that writes to whatever `sys.stderr` is now (not the stream it was made with, which
    an in-process run, e.g. a test runner's capture, may have closed since)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


class OncePerMessage(logging.Filter):
    """Lets each distinct (logger, level, message) through once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        key = (record.name, record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def saved_levels() -> dict[str, int]:
    """The levels `configure` may change (restored after an in-process run, e.g. under tests)."""
    return {name: logging.getLogger(name or None).level for name in ("", *NOISY)}


def restore_levels(levels: dict[str, int]) -> None:
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)


def configure(quiet: bool = False, verbose: bool = False) -> None:
    """Set up the root logger on stderr (called per command; idempotent)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_metis", False)), None)
    if handler is None:
        handler = _CurrentStderr()
        handler._metis = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(OncePerMessage())
        root.addHandler(handler)
    if verbose:
        root.setLevel(logging.DEBUG)
    elif quiet:
        root.setLevel(logging.ERROR)
        for name in NOISY:
            logging.getLogger(name).setLevel(logging.ERROR)
    elif root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)

"""metis: a command-line toolkit and Python API for the Metis / MaskGCT speech models.

import metis_cli
pipe = metis_cli.load("se")          # see metis_cli.api.load
wav = pipe("noisy.wav", seed=0).wav  # or pipe(metis_cli.AudioArray(samples, 16000))

Errors are `MetisError` subclasses (exported here) with a one-line message naming the input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metis_cli.errors import (
    AudioError,
    CheckpointError,
    InputError,
    MetisError,
    MissingModelError,
    NonFiniteError,
    OutputError,
    TextError,
    UsageError,
    VideoError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from metis_cli.api import Pipeline
    from metis_cli.media.audio import AudioArray


def load(task: str, model: str | None = None, **kwargs: Any) -> Pipeline:
    """Build a pipeline for a task; see `metis_cli.api.load` (imported lazily: torch is heavy)."""
    from metis_cli.api import load as _load

    return _load(task, model, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "AudioArray":  # numpy + soundfile: imported on first use
        from metis_cli.media.audio import AudioArray

        return AudioArray
    raise AttributeError(f"module 'metis_cli' has no attribute {name!r}")


__all__ = [
    "AudioArray",
    "AudioError",
    "CheckpointError",
    "InputError",
    "MetisError",
    "MissingModelError",
    "NonFiniteError",
    "OutputError",
    "TextError",
    "UsageError",
    "VideoError",
    "load",
]

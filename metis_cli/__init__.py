"""metis: a command-line toolkit and Python API for the Metis / MaskGCT speech models.

import metis_cli
pipe = metis_cli.load("se")          # see metis_cli.api.load
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from .api import Pipeline


def load(task: str, model: str | None = None, **kwargs: Any) -> Pipeline:
    """Build a pipeline for a task; see `metis_cli.api.load` (imported lazily: torch is heavy)."""
    from .api import load as _load

    return _load(task, model, **kwargs)

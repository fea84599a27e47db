"""Small file-system helpers shared by the writers (audio outputs, exports, caches)."""

from __future__ import annotations

import os


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give a file the permissions a newly created file gets (0666 & ~umask).

    For files written by libraries that create them 0600 (``tempfile.mkstemp``,
    safetensors' ``save_file``), so that exported weights and caches are shared like any
    other output.
    """
    os.chmod(path, 0o666 & ~current_umask())

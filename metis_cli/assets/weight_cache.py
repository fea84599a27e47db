"""On-disk cache of bf16 copies of checkpoints (the released files are float32).

The first `--dtype bfloat16` load of a file converts its tensors (for LoRA models: merges
stage 1 in float32, then casts) and writes the result as a safetensors file into
`$METIS_CACHE_DIR/bf16/` (default `~/.cache/metis/bf16/`); later loads memory-map that file
directly: no conversion, and half the page cache of the float32 file.

An entry is named by the identity of its sources (resolved path, size, mtime, SHA-256 of the
safetensors header) plus what was derived from them (kind, parameters such as the LoRA rank
and alpha, target dtype, cache format), and records that identity in its metadata. An entry is
used only if its identity matches, its keys and shapes are exactly the module's, every floating
tensor has the target dtype, and the byte checksum of its tensors matches the one written with
it; otherwise it is rebuilt. Files are written to a temporary name and renamed into place, so
a crash or a concurrent writer never leaves a half-written entry under the real name. Writing a
new entry removes older entries derived from the same source paths.

`METIS_BF16_CACHE_DIR` names the folder itself. Disable with `METIS_BF16_CACHE=0` or
`EngineOptions(bf16_cache=False)`; delete the folder to reclaim the disk space (about half the
size of the float32 files used).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from metis_cli.assets import cache
from metis_cli.assets.checkpoint import ST_DTYPES, check_keys, read_header, read_tensors
from metis_cli.assets.umask import apply_umask
from metis_cli.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the meaning of an entry changes
DIR_ENV = "METIS_BF16_CACHE_DIR"  # the bf16 folder itself (overrides $METIS_CACHE_DIR/bf16)
SWITCH_ENV = "METIS_BF16_CACHE"
_ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


def cache_root() -> Path:
    """`$METIS_BF16_CACHE_DIR`, else `$METIS_CACHE_DIR/bf16`, else `~/.cache/metis/bf16`."""
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV]).expanduser()
    return cache.cache_root() / "bf16"


def env_enabled() -> bool:
    """False when `METIS_BF16_CACHE` is 0 / false / no / off."""
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def file_identity(path: Path) -> dict[str, Any]:
    """Resolved path, size, mtime (ns) and SHA-256 of the safetensors header of `path`."""
    path = Path(path)
    try:
        st = path.stat()
        with path.open("rb") as fh:
            raw = fh.read(8)
            n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0
            header = fh.read(min(n, 100_000_000))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return {
        "path": str(path.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "header_sha256": hashlib.sha256(raw + header).hexdigest(),
    }


def data_checksum(path: Path) -> str:
    """Wrapping 64-bit sum of the data section of a safetensors file, as 16 hex digits.

    Cheap enough for every load (one vectorised pass over the memory-mapped bytes, ~0.1 s per
    GB here); it catches truncation, zeroed pages and any single flipped bit, not tampering."""
    import mmap
    import warnings

    with Path(path).open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if fh.seek(0, os.SEEK_END) <= 8 + n:
            return f"{0:016x}"
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        start, end = 8 + n, len(mm)
        lo = min(end, -(-start // 8) * 8)
        hi = lo + (end - lo) // 8 * 8
        total = sum(mm[start:lo]) + sum(mm[hi:end])  # unaligned head and tail bytes
        if hi > lo:
            with warnings.catch_warnings():  # a read-only buffer: nothing here writes to it
                warnings.simplefilter("ignore", UserWarning)
                words = torch.frombuffer(mm, dtype=torch.int64, offset=lo, count=(hi - lo) // 8)
            total += int(words.sum())
            del words
    finally:
        mm.close()
    return f"{total % 2**64:016x}"


def cached_tensors(
    sources: Sequence[Path],
    *,
    kind: str,
    dtype: torch.dtype,
    expected: Mapping[str, tuple[int, ...]],
    build: Callable[[], Mapping[str, torch.Tensor]],
    params: Mapping[str, Any] | None = None,
    root: Path | None = None,
) -> dict[str, torch.Tensor]:
    """The `dtype` tensors derived from `sources`, memory-mapped from the cache.

    `build()` computes them from the sources (it must check the sources strictly); it runs
    only when no valid entry exists. Its floating tensors are cast to `dtype`, and its keys and
    shapes must be `expected` exactly. When the cache folder cannot be written, the built
    tensors are returned as they are (with a warning).
    """
    root = cache_root() if root is None else Path(root)
    identity = json.dumps(
        {
            "format": FORMAT,
            "kind": kind,
            "dtype": str(dtype),
            "params": dict(params or {}),
            "sources": [file_identity(p) for p in sources],
        },
        sort_keys=True,
    )
    # entries that differ only in the sources' contents share the stem (a new one replaces them)
    where = [kind, str(dtype), dict(params or {}), [str(Path(p).resolve()) for p in sources]]
    stem = hashlib.sha256(json.dumps(where, sort_keys=True).encode()).hexdigest()
    path = root / f"{stem[:16]}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.safetensors"
    if path.is_file():
        try:
            tensors = _open_verified(path, identity, expected, dtype)
            log.debug("bf16 cache hit: %s", path)
            return tensors
        except CheckpointError as exc:
            log.warning("%s; rebuilding it", exc)
    built = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in build().items()}
    check_keys(expected, {k: tuple(v.shape) for k, v in built.items()}, source=f"{kind} from {sources[0]}")
    try:
        _write_atomic(path, built, identity)
    except OSError as exc:
        log.warning("%s: cannot write the bf16 cache (%s); using the converted weights", path, exc)
        return built
    for old in root.glob(f"{stem[:16]}-*.safetensors"):
        if old != path:
            old.unlink(missing_ok=True)
    del built
    return _open_verified(path, identity, expected, dtype)


def _write_atomic(path: Path, tensors: dict[str, torch.Tensor], identity: str) -> None:
    """Write to a temporary file, put the data checksum into its header, rename into place."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        meta = {"metis_identity": identity, "metis_checksum": _PLACEHOLDER}
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
        value = data_checksum(Path(tmp)).encode()
        with open(tmp, "r+b") as fh:  # same length: the header size does not change
            head = fh.read(struct.unpack("<Q", fh.read(8))[0])
            key = head.find(b'"metis_checksum"')
            at = head.find(b'"' + _PLACEHOLDER.encode() + b'"', key)
            if key < 0 or at < 0:
                raise OSError("checksum field not found in the written header")
            fh.seek(8 + at + 1)
            fh.write(value)
        apply_umask(tmp)  # mkstemp and save_file create 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_PLACEHOLDER = "0" * 16  # replaced by the checksum once the data section is written


def _open_verified(
    path: Path, identity: str, expected: Mapping[str, tuple[int, ...]], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Memory-map a cache entry after checking identity, layout, dtypes and checksum."""
    from safetensors import SafetensorError, safe_open

    header = read_header(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: unreadable bf16 cache entry ({exc})") from None
    if meta.get("metis_identity") != identity:
        raise CheckpointError(f"{path}: bf16 cache entry made from other sources")
    check_keys(expected, {k: s for k, (_, s) in header.items()}, source=f"{path} (bf16 cache)")
    name = _ST_NAMES[dtype]
    wrong = [k for k, (d, _) in header.items() if d.startswith(("F", "BF")) and d != name]
    if wrong:
        raise CheckpointError(f"{path}: bf16 cache entry has {len(wrong)} tensors not in {name}")
    if data_checksum(path) != meta.get("metis_checksum"):
        raise CheckpointError(f"{path}: bf16 cache entry fails its checksum")
    return read_tensors(path)

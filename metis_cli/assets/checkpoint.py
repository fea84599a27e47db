"""Strict safetensors loading: every key and shape is checked, nothing is ignored silently.

Modules are built on the meta device (no random initialisation) and receive the file's
tensors directly (`load_state_dict(assign=True)`), memory-mapped by safetensors.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from metis_cli.errors import CheckpointError

M = TypeVar("M", bound=nn.Module)

_SHOW = 5  # offending keys named in an error message

# safetensors dtype names -> torch dtypes (the ones a checkpoint of ours may hold)
ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Read a safetensors header without touching tensor data.

    Returns {key: (dtype name as in the file, e.g. "F32", shape)}.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n <= 0 or n > 100_000_000:
                raise CheckpointError(f"{path}: not a safetensors file (bad header length {n})")
            header = json.loads(fh.read(n))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    header.pop("__metadata__", None)
    out = {}
    for k, v in header.items():
        try:
            out[k] = (v["dtype"], tuple(int(d) for d in v["shape"]))
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: not a safetensors file (bad header entry for {k})") from None
    return out


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file on the CPU (memory-mapped; no pickle is ever read)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    read_header(path)  # clear message for files that are not safetensors at all
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot read safetensors data ({exc})") from None


def _fmt(keys: list[str]) -> str:
    head = ", ".join(keys[:_SHOW])
    return head + (f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def check_keys(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
    *,
    source: str,
    tolerated_extra: Iterable[str] = (),
) -> None:
    """Raise CheckpointError unless `found` has exactly the keys and shapes of `expected`.

    `tolerated_extra` keys may appear in `found` without being expected (e.g. the
    zero-size `diff_estimator.embed_tokens.weight` of the official S2A files).
    """
    tolerated = set(tolerated_extra)
    missing = sorted(k for k in expected if k not in found)
    unexpected = sorted(k for k in found if k not in expected and k not in tolerated)
    mismatched = sorted(k for k in expected if k in found and tuple(found[k]) != tuple(expected[k]))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_fmt(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_fmt(unexpected)}")
    if mismatched:
        shown = [f"{k} expected {list(expected[k])} found {list(found[k])}" for k in mismatched]
        problems.append(f"{len(mismatched)} shape mismatch(es): {_fmt(shown)}")
    if problems:
        raise CheckpointError(f"{source}: does not match the expected layout: " + "; ".join(problems))


def build_on_meta(factory: Callable[[], M]) -> M:
    """Construct a module without allocating or initialising its parameters."""
    with torch.device("meta"):
        return factory()


def load_state(
    module: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    *,
    source: str,
    tolerated_extra: Iterable[str] = (),
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Strictly load `tensors` into `module` (which may live on the meta device).

    Keys and shapes must match `module.state_dict()` exactly (apart from `tolerated_extra`).
    Floating tensors are cast to `dtype` when given; everything is moved to `device`.
    The module's parameters are replaced by the loaded tensors (no copy when nothing changes).
    """
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    check_keys(expected, found, source=source, tolerated_extra=tolerated_extra)
    state = {}
    for key in expected:
        t = tensors[key]
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        if device is not None:
            t = t.to(device)
        state[key] = t
    module.load_state_dict(state, strict=True, assign=True)
    leftover = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if leftover:
        raise CheckpointError(f"{source}: module state not covered by the file: {_fmt(leftover)}")
    return module


def load_file_into(
    module: nn.Module,
    path: str | Path,
    *,
    tolerated_extra: Iterable[str] = (),
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """`read_tensors(path)` then `load_state(...)`, naming the file in every error."""
    return load_state(
        module,
        read_tensors(path),
        source=str(path),
        tolerated_extra=tolerated_extra,
        dtype=dtype,
        device=device,
    )

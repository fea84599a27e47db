"""Devices and numeric precision: which device `auto` means, dtypes by name, the TF32 policy and
the MPS policy.

* `resolve_device(name)`: `auto` is CUDA when available, else MPS when it is safe (below),
  else the CPU; an explicit name is checked against the machine (InputError otherwise).
* `apply_precision(device, dtype, allow_tf32)`: float32 on CUDA is the reference mode only
  with TF32 off. PyTorch allows TF32 in cuDNN convolutions by default (and cuBLAS matmuls
  when asked), which rounds fp32 inputs to 10-bit mantissas; so fp32 on CUDA turns TF32 off
  for matmuls and cuDNN unless `allow_tf32`. (Even with TF32 off a CUDA run is not the CPU
  reference: its GEMMs round differently and CUDA's random generator differs from the CPU's,
  so the same seed gives other audio.) The legacy `allow_tf32` flags are set; code that also
  uses PyTorch's newer `fp32_precision` API must not mix the two.
* MPS (Apple GPUs): complex tensors and `torch.fft.irfft` need macOS 14, and MPS has had
  silent-correctness bugs in them. `auto` picks MPS only on macOS >= 14, an explicit `mps`
  on an older macOS is refused, and the acoustic decoder's iSTFT (the only complex / FFT op
  of the pipeline) always runs on the CPU when the model is on MPS (`nn.acoustic_codec`).
"""

from __future__ import annotations

import platform

import torch

from metis_cli.errors import InputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MPS_MIN_MACOS = (14, 0)


def macos_version() -> tuple[int, ...] | None:
    """(major, minor, ...) of the running macOS, None elsewhere."""
    if platform.system() != "Darwin":
        return None
    release = platform.mac_ver()[0]
    try:
        return tuple(int(p) for p in release.split(".") if p)
    except ValueError:
        return None


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def mps_safe() -> bool:
    """MPS is available and macOS is recent enough for its complex / FFT ops."""
    version = macos_version()
    return mps_available() and version is not None and version >= MPS_MIN_MACOS


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda if available, else mps if `mps_safe()`, else cpu; other names are checked
    against the machine (InputError naming the problem)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_safe():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device: unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device: '{name}' requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(
                f"--device: '{name}' requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif dev.type == "mps":
        if not mps_available():
            raise InputError("--device: 'mps' requested but MPS is not available")
        version = macos_version()
        if version is None or version < MPS_MIN_MACOS:
            shown = ".".join(map(str, version)) if version else "unknown"
            raise InputError(f"--device: 'mps' needs macOS 14 or later (this is macOS {shown})")
    elif dev.type != "cpu":
        raise InputError(
            f"--device: unsupported device type '{dev.type}' (use auto, cpu, cuda, cuda:N or mps)"
        )
    return dev


def apply_precision(device: torch.device, dtype: torch.dtype, allow_tf32: bool = False) -> None:
    """CUDA float32: TF32 off for cuBLAS matmuls and cuDNN convolutions unless `allow_tf32`.

    Other devices and dtypes: nothing changes (bf16 / fp16 do not use TF32; the CPU has none).
    The flags are process-wide, like PyTorch's own.
    """
    if device.type == "cuda" and dtype == torch.float32:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32


def tf32_state() -> dict[str, bool]:
    """The TF32 flags as the legacy API reports them (for diagnostics)."""
    return {
        "matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn": bool(torch.backends.cudnn.allow_tf32),
    }

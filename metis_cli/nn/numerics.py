"""Which dtype the numerically sensitive pieces (norm statistics, softmax, rotary and time
tables, VQ distances, the iSTFT) are computed in.

They follow the activations' dtype, except in the reduced-precision fast modes (bfloat16,
float16), where they are upcast to float32. So float32 is computed in float32 (the reference
mode) and float64 in float64: a model cast with `.double()` is a true float64 evaluation, which
the golden tests use as the exact value that float32 results are measured against.
"""

from __future__ import annotations

import torch

REDUCED_PRECISION = (torch.bfloat16, torch.float16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for bfloat16 / float16, otherwise `dtype` itself (float32, float64)."""
    return torch.float32 if dtype in REDUCED_PRECISION else dtype

"""Run by tests/train/test_dist_exit.py under torchrun: one exit path of `dist.session`.

argv[1]: "end" (both ranks finish; rank 0 is still busy when rank 1 is done), or "error"
(rank 1 raises while rank 0 waits in a collective).
"""

from __future__ import annotations

import sys
import time

import torch

from metis_cli.train import dist

mode = sys.argv[1]
with dist.session("cpu") as (ctx, _device):
    ctx.all_sum(torch.ones(1))
    if mode == "error" and ctx.rank == 1:
        raise RuntimeError("planned failure in rank 1")
    if mode == "error":
        ctx.all_sum(torch.ones(1))  # never completed: rank 1 is gone
    if mode == "end" and ctx.rank == 0:
        torch.manual_seed(0)
        for _ in range(200):  # rank 0 still works (as when it writes the checkpoint)
            torch.linalg.inv(torch.randn(200, 200))
        print(f"rank 0 busy until {time.time()!r}", flush=True)
    left = torch.distributed.is_initialized()
print(f"rank {ctx.rank} left at {time.time()!r}", flush=True)
print(f"rank {ctx.rank} left={left} initialized={torch.distributed.is_initialized()}", flush=True)

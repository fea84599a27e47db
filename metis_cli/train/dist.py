"""Multi-process data-parallel training: torchrun + `torch.nn.parallel.DistributedDataParallel`.

Launched as `torchrun --nproc_per_node=N -m metis_cli.cli finetune ...` (or `pretrain`), each
process sees `WORLD_SIZE`, `RANK` and `LOCAL_RANK` in its environment. `session(device)` then
joins the process group (`nccl` for CUDA, each process on `cuda:LOCAL_RANK`; `gloo` on CPU)
and leaves it at the end. Without `WORLD_SIZE` > 1 nothing happens: one process, as before.

How the work is split (`loop.train`): every process holds the same data, the same seeded
generator and the same model, and draws every random choice of the *global* micro-batch of
`--batch-size` items (crops, prompt dropout, t, masks) exactly as a single process would;
each rank then runs the forward and backward of its contiguous share of the rows
(`DistContext.rows`) and DDP averages the gradients. Each rank's loss is its share of the
global masked-token sum, scaled so that the average equals the single-process token mean, so
N processes train the same model as one process with the same `--batch-size` (up to float
summation order). Only rank 0 writes files (checkpoints, exports, `log.jsonl`), evaluates the
held-out set and reports progress; every rank computes its share of the feature cache first.

Ending (`session`): every exit path leaves the process group in the same order on every rank,
so no rank tears its connections down while another still uses them (a rank that left early
could abort with "terminate called without an active exception"). A normal end (the last
step, `--stop-after`) waits at a barrier for every rank, then destroys the group. An exception
(SIGTERM/SIGINT turned into `Interrupted`, an error in this rank) destroys the group at once:
the other ranks may be gone or blocked in a collective this rank will never join; closing
its connections makes their collective fail (and torchrun stops them) instead of waiting
for `TIMEOUT`.

Devices: each process uses `cuda:LOCAL_RANK`; where a launcher gives each task one visible GPU
(SLURM with `--gpus-per-task=1`, or `CUDA_VISIBLE_DEVICES` set per process) and LOCAL_RANK is
past the visible count, the process uses `cuda:0`, its own GPU.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from metis_cli.engine import resolve_device
from metis_cli.errors import InputError

# Collectives wait this long: a rank may compute a large share of the feature cache (or rank 0
# evaluate a large held-out set) while the other ranks wait at a barrier.
TIMEOUT = datetime.timedelta(hours=6)


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def is_main_process() -> bool:
    """True unless this process is a launched rank other than 0 (for printing in the CLI)."""
    return env_world_size() <= 1 or os.environ.get("RANK", "0") == "0"


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, n: int) -> range:
        """This rank's contiguous share of a global batch of n rows (sizes differ by at most 1)."""
        return range(n * self.rank // self.world, n * (self.rank + 1) // self.world)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of `x` over ranks (a new tensor; `x` itself when not distributed)."""
        if not self.enabled:
            return x
        y = x.detach().clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y


SINGLE = DistContext()


def cuda_index(local_rank: int, visible: int) -> int:
    """The CUDA device a rank uses: its LOCAL_RANK, or 0 when it sees exactly one GPU.

    With one GPU per task (SLURM `--gpus-per-task=1`, per-process CUDA_VISIBLE_DEVICES) every
    process sees its own GPU as cuda:0 while LOCAL_RANK counts the tasks of the node.
    """
    if visible < 1:
        raise InputError("--device cuda but no CUDA device is visible to this process")
    if local_rank < visible:
        return local_rank
    if visible == 1:
        return 0
    raise InputError(
        f"LOCAL_RANK {local_rank} but only {visible} CUDA device(s) are visible: start at most "
        f"{visible} processes per node, or give each process one GPU"
    )


@contextlib.contextmanager
def session(device: str) -> Iterator[tuple[DistContext, str]]:
    """(context, this process's device name) for a run launched with `device`.

    Under torchrun (WORLD_SIZE > 1) joins the process group for the run (unless the caller
    already did) and leaves it afterwards; CUDA devices become `cuda:LOCAL_RANK`.
    """
    world = env_world_size()
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        yield SINGLE, device
        return
    if not dist.is_available():
        raise InputError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    dev = resolve_device(device)
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"multi-process training runs on cuda or cpu, not '{dev.type}'")
    if dev.type == "cuda":
        index = cuda_index(int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count())
        torch.cuda.set_device(index)
        device = f"cuda:{index}"
    owns = not dist.is_initialized()
    if owns:
        kw = {"device_id": torch.device(device)} if dev.type == "cuda" else {}
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT, **kw)
    try:
        yield DistContext(dist.get_rank(), dist.get_world_size()), device
    except BaseException:
        if owns:
            leave(None)
        raise
    if owns:
        leave(TIMEOUT)


def leave(wait: datetime.timedelta | None) -> None:
    """Leave the process group in order: a barrier (when `wait` is given), then destroy it.

    `wait=None` (after an exception) destroys the group at once: a barrier could pair with a
    collective another rank is blocked in, and destroying a group with an unfinished barrier
    blocks. Destroying closes this rank's connections, so the other ranks' pending collectives
    fail instead of waiting for the 6-hour `TIMEOUT`.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if wait is not None:
            dist.barrier()
    finally:
        with contextlib.suppress(RuntimeError, ValueError):
            dist.destroy_process_group()

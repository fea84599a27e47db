"""Sharded runs: which part of a planned job list this process runs, on which device, in what order.

One planned job list (`jobs.plan`: the same planning, naming and validation as a single-process
run) is split between N processes, each on its own machine or GPU, with no scheduler and no
communication between them:

* `Shard(index, count)`: from `--shard I/N` (0-based), else from the launcher's environment
  (`shard_from_env`): torchrun / `accelerate launch` (`RANK`, `WORLD_SIZE`), a SLURM array
  (`SLURM_ARRAY_TASK_ID` with `SLURM_ARRAY_TASK_COUNT`, or `SLURM_ARRAY_TASK_MIN`/`_MAX`/`_STEP`)
  or the tasks of an `srun` step (`SLURM_PROCID` of `SLURM_STEP_NUM_TASKS`). A SLURM array whose
  tasks each launch several processes (torchrun or `srun -n M`) is split twice: shard = array
  index x M + rank, of array count x M.
* `select(plan, shard)`: round-robin by position in the plan: item i (0-based, bad manifest
  lines included) belongs to shard i mod N. The split depends only on the planned list and N,
  so a rerun selects the same items, and every item is in exactly one shard; shards differ in
  size by at most one item, and a manifest sorted by length gives every shard the same mix.
* `local_device(device)`: with `--device auto`, process LOCAL_RANK of a node takes
  `cuda:LOCAL_RANK` (modulo the visible GPUs) when CUDA is available.
Length buckets live in `runs.buckets`; the CLI's run (shard → resume → buckets → ledger) is
`runs.session.Session.open`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from metis_cli.errors import UsageError
from metis_cli.jobs import Plan

# ---- which shard ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """Shard `index` (0-based) of `count`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(f"shard {self.index}/{self.count}: must be I/N with 0 <= I < N")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def suffix(self) -> str:
        """`shard-00003-of-00008` (ledger file names)."""
        return f"shard-{self.index:05d}-of-{self.count:05d}"

    def size(self, total: int) -> int:
        """Items of a `total`-item plan in this shard (round-robin)."""
        return max(0, math.ceil((total - self.index) / self.count))

    @classmethod
    def parse(cls, text: str, flag: str = "--shard") -> Shard:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m:
            raise UsageError(f"{flag}: must be I/N, 0-based, e.g. 0/8 (got {text!r})")
        index, count = int(m.group(1)), int(m.group(2))
        if count < 1 or index >= count:
            raise UsageError(f"{flag}: must be I/N with 0 <= I < N (got {text!r})")
        return cls(index, count)


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{name}={value!r}: not an integer") from None


def _pair(env: Mapping[str, str], index_name: str, count_name: str) -> Shard | None:
    index, count = _int_env(env, index_name), _int_env(env, count_name)
    if index is None or count is None:
        return None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"{index_name}={index}, {count_name}={count}: need 0 <= {index_name} < {count_name}")
    return Shard(index, count)


def _slurm_array(env: Mapping[str, str]) -> Shard | None:
    task_id = _int_env(env, "SLURM_ARRAY_TASK_ID")
    if task_id is None:
        return None
    lo = _int_env(env, "SLURM_ARRAY_TASK_MIN")
    hi = _int_env(env, "SLURM_ARRAY_TASK_MAX")
    step = _int_env(env, "SLURM_ARRAY_TASK_STEP") or 1
    count = _int_env(env, "SLURM_ARRAY_TASK_COUNT")
    lo = 0 if lo is None else lo
    if count is None:
        if hi is None:
            raise UsageError(
                "SLURM_ARRAY_TASK_ID is set without SLURM_ARRAY_TASK_COUNT or SLURM_ARRAY_TASK_MAX: "
                "give --shard I/N"
            )
        count = (hi - lo) // step + 1
    if (task_id - lo) % step:
        raise UsageError(f"SLURM array task {task_id} is not on the array's step {step}: give --shard I/N")
    index = (task_id - lo) // step
    if not 0 <= index < count:
        raise UsageError(
            f"SLURM array task {task_id} (min {lo}, step {step}) is not one of {count} tasks "
            "(arrays with gaps, e.g. --array=1,3,7, need --shard I/N)"
        )
    return Shard(index, count)


def shard_from_env(env: Mapping[str, str] | None = None) -> Shard | None:
    """The shard the launcher's environment describes, or None (one process runs everything).

    torchrun / accelerate: RANK, WORLD_SIZE; else the tasks of an `srun` step: SLURM_PROCID of
    SLURM_STEP_NUM_TASKS (not SLURM_NTASKS: a batch script itself runs once with SLURM_PROCID=0
    and SLURM_NTASKS of the whole allocation, and must not take a share). An enclosing SLURM
    array (SLURM_ARRAY_TASK_ID ...) multiplies: each array task's processes split its share."""
    env = os.environ if env is None else env
    inner = _pair(env, "RANK", "WORLD_SIZE") or _pair(env, "SLURM_PROCID", "SLURM_STEP_NUM_TASKS")
    outer = _slurm_array(env)
    if outer is None:
        shard = inner
    elif inner is None:
        shard = outer
    else:
        shard = Shard(outer.index * inner.count + inner.index, outer.count * inner.count)
    return None if shard is None or shard.count == 1 else shard


def resolve_shard(flag: str | None, env: Mapping[str, str] | None = None) -> Shard | None:
    """`--shard I/N` when given (N = 1 means no sharding), else the environment's shard."""
    if flag is not None:
        shard = Shard.parse(flag)
        return None if shard.count == 1 else shard
    return shard_from_env(env)


def select(plan: Plan, shard: Shard | None) -> Plan:
    """The items of `plan` that belong to `shard`: item i when i mod N == index (in plan order)."""
    if shard is None:
        return plan
    items = plan.items[shard.index :: shard.count]
    return Plan(plan.task, list(items), list(plan.warnings))


# ---- which device ----------------------------------------------------------------------------------------


def local_rank(env: Mapping[str, str] | None = None) -> int | None:
    """This process's rank on its node: LOCAL_RANK (torchrun, accelerate), else SLURM_LOCALID."""
    env = os.environ if env is None else env
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = _int_env(env, name)
        if value is not None:
            if value < 0:
                raise UsageError(f"{name}={value}: must be >= 0")
            return value
    return None


def local_device(
    device: str,
    env: Mapping[str, str] | None = None,
    cuda_count: Callable[[], int] | None = None,
) -> str:
    """`auto` → `cuda:LOCAL_RANK` (modulo the visible GPUs) in a multi-process launch on a
    machine with CUDA; any other value (and `auto` without CUDA or LOCAL_RANK) unchanged."""
    if device != "auto":
        return device
    rank = local_rank(env)
    if rank is None:
        return device
    if cuda_count is None:
        import torch

        def cuda_count() -> int:
            return torch.cuda.device_count() if torch.cuda.is_available() else 0

    n = cuda_count()
    return f"cuda:{rank % n}" if n > 0 else device


# ---- ending together (torchrun) -----------------------------------------------------------------------


def torchrun_barrier(env: Mapping[str, str] | None = None, days: float = 30.0) -> bool:
    """Under torchrun (or `accelerate launch`), wait until every rank has finished its shard.

    torchrun stops all ranks as soon as one exits non-zero, and a shard with a failed job exits
    1: without this, its siblings would be killed mid-run. Every rank joins a gloo group at the
    end (the rendezvous and barrier wait up to `days`) and leaves it at once. False when not
    under torchrun or the group could not be formed (a warning is logged)."""
    env = os.environ if env is None else env
    if "TORCHELASTIC_RUN_ID" not in env or "MASTER_ADDR" not in env:
        return False
    if (_int_env(env, "WORLD_SIZE") or 1) <= 1:
        return False
    import datetime
    import logging

    import torch.distributed as dist

    if not dist.is_available():
        return False
    try:
        if dist.is_initialized():
            dist.barrier()
        else:
            dist.init_process_group("gloo", timeout=datetime.timedelta(days=days))
            try:
                dist.barrier()
            finally:
                dist.destroy_process_group()
    except Exception as exc:  # never turn finished work into a crash
        logging.getLogger(__name__).warning("could not wait for the other ranks: %s", exc)
        return False
    return True


__all__ = [
    "Shard",
    "local_device",
    "local_rank",
    "resolve_shard",
    "select",
    "shard_from_env",
    "torchrun_barrier",
]

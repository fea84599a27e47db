"""Length buckets: reorder a plan's jobs so padded batches waste little, and measure padding.

Lengths come from file headers only (`audio.probe`), so bucketing reads no audio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from metis_cli.core.tasks import TASKS
from metis_cli.jobs import Job, Plan, Rejected

BUCKET_WINDOW = 32  # jobs are sorted within windows of this many batches


def job_seconds(job: Job) -> float | None:
    """A job's sequence length in seconds, from file headers only (`audio.probe`): the sum of
    its audio inputs (the prompt is part of the sequence for TSE/VC); TTS adds its target
    length (`duration`, else the prompt's seconds per character times the text's characters).
    None when unknown (L2S videos, unreadable inputs)."""
    from metis_cli.media.audio import probe

    spec = TASKS[job.task]
    if spec.needs_visual:
        return None
    total = 0.0
    for role in spec.inputs + spec.optional_inputs:
        src = job.inputs.get(role)
        if src is None:
            continue
        try:
            total += probe(src).seconds
        except Exception:  # unreadable: the job reports it when it runs
            return None
    if spec.needs_text:
        if job.duration is not None:
            total += job.duration
        else:
            chars = max(len((job.prompt_text or "").strip()), 1)
            total += total / chars * len((job.text or "").strip())
    return total


@dataclass(frozen=True)
class Padding:
    """Frames a run order feeds the model: useful (each job's own) and padded (batch max x size)."""

    useful: float
    padded: float
    batches: int

    @property
    def efficiency(self) -> float | None:
        return None if self.padded <= 0 else self.useful / self.padded


def padding(lengths: Sequence[float | None], batch_size: int, long_seconds: float = 0.0) -> Padding:
    """Padding of jobs run in this order in padded batches of `batch_size` (the engine batches
    consecutive jobs; a job longer than `long_seconds` > 0 runs alone, in chunks). Unknown
    lengths (None) are left out."""
    useful = padded = 0.0
    batches = 0
    batch: list[float] = []

    def flush() -> None:
        nonlocal padded, batches
        if batch:
            padded += max(batch) * len(batch)
            batches += 1
            batch.clear()

    for n in lengths:
        if n is None:
            continue
        useful += n
        if long_seconds > 0 and n > long_seconds:
            flush()
            padded += n
            batches += 1
            continue
        batch.append(n)
        if len(batch) >= batch_size:
            flush()
    flush()
    return Padding(useful, padded, batches)


@dataclass
class Buckets:
    plan: Plan  # the reordered plan
    bucketed: Padding  # padding of the new order
    original: Padding  # padding of the plan order
    sorted: bool = True  # False: plan order kept (measured only)


def bucket(
    plan: Plan,
    batch_size: int,
    window: int = BUCKET_WINDOW,
    long_seconds: float = 0.0,
    lengths: Callable[[Job], float | None] = job_seconds,
    sort: bool = True,
) -> Buckets:
    """Reorder the plan's jobs by length, longest first, within windows of `window` batches
    (bounded look-ahead: the first outputs appear early, and resume points stay close to plan
    order); ties and unknown lengths (last) keep plan order. Rejected items come first (they
    report at once). `sort=False` keeps the order and only measures it."""
    rejected = [i for i in plan.items if not isinstance(i, Job)]
    jobs = [i for i in plan.items if isinstance(i, Job)]
    lens = [lengths(j) for j in jobs]
    original = padding(lens, batch_size, long_seconds)
    if not sort or batch_size <= 1:
        return Buckets(plan, original, original, sorted=False)
    size = max(1, window * batch_size)
    order: list[int] = []
    for start in range(0, len(jobs), size):
        idx = range(start, min(start + size, len(jobs)))
        order.extend(sorted(idx, key=lambda k: (lens[k] is None, -(lens[k] or 0.0), k)))
    items: list[Job | Rejected] = [*rejected, *(jobs[k] for k in order)]
    bucketed = padding([lens[k] for k in order], batch_size, long_seconds)
    return Buckets(Plan(plan.task, items, list(plan.warnings)), bucketed, original)

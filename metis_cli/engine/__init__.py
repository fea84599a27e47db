"""The engine: runs planned jobs through the four rooms, one job's failure never stopping the rest.

    loader.py    ModelLoader       cards, strict loading, bf16 cache, devices, residency policy
    batch.py     BatchGenerator    conditions → stage 1 → S2A → decoder for one padded batch
    longform.py  LongformStrategy  long inputs: chunk plan, context carry, joins
    writer.py    OutputWriter      every output (short or long) written the same way, atomically

Data flow per batch (spec §1.1): task conditions (audio → SSL features / semantic and acoustic
prompt codes, or phones) → stage 1 (semantic tokens) → S2A 1-layer → S2A full → acoustic
decoder → 24 kHz waveform. The engine knows no task: what differs per task is data in
`tasks.TaskSpec`.

Failure isolation: any exception inside a job (a bad input, a torch RuntimeError, running out
of memory, a bug in a text front end) fails that job with a one-line message (the traceback is
logged at debug level); a failure inside a padded batch re-runs its items one by one, so only
the bad item fails. Errors about the models themselves (`FATAL`) end the run: every job would
fail the same way.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metis_cli.assets.cards import ModelStore
from metis_cli.core.decoding import Decoding  # noqa: F401  (re-exported)
from metis_cli.core.devices import DTYPES, resolve_device  # noqa: F401  (re-exported)
from metis_cli.core.prompt_cache import PromptCache
from metis_cli.core.tasks import Conditions, Job
from metis_cli.engine.batch import BatchGenerator, StageTimer  # noqa: F401  (re-exported)
from metis_cli.engine.loader import ModelLoader, StageStats  # noqa: F401  (re-exported)
from metis_cli.engine.longform import LongformStrategy, check_cancelled, piece_fades, stream_piece_jobs
from metis_cli.engine.writer import OutputWriter
from metis_cli.errors import CheckpointError, MetisError, MissingModelError
from metis_cli.options import EngineOptions, LongformOptions

log = logging.getLogger(__name__)

FATAL = (MissingModelError, CheckpointError)


@dataclass
class JobResult:
    job: Job
    wav: np.ndarray | None  # (N,) float32 at 24 kHz when kept (keep=True), else None
    error: str | None = None  # one-line message on failure
    error_type: type[BaseException] | None = None  # the exception class of a failure
    seconds: float = 0.0  # processing time attributed to this job
    audio_seconds: float | None = None  # duration of the main input (None: never read)
    output_samples: int | None = None  # samples written (24 kHz)
    info: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def one_line(job: Job, exc: BaseException) -> str:
    """The one-line message of a job's failure, naming the job."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if not isinstance(exc, MetisError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    where = job.describe()
    return text if where and where in text else f"{where}: {text}"


class Engine:
    """Runs jobs of one task with one model card. Components load on first use, once."""

    def __init__(
        self,
        task: str,
        model: str | None = None,
        store: ModelStore | None = None,
        options: EngineOptions | None = None,
        longform: LongformOptions | None = None,
    ) -> None:
        self.loader = ModelLoader(task, model, store, options)
        self.generator = BatchGenerator(self.loader)
        self.longform = LongformStrategy(self.generator, longform or LongformOptions())
        self.writer = OutputWriter()

    # -- the loader's facts, for callers -------------------------------------------------------
    task = property(lambda self: self.loader.task)
    spec = property(lambda self: self.loader.spec)
    card = property(lambda self: self.loader.card)
    store = property(lambda self: self.loader.store)
    options = property(lambda self: self.loader.options)
    device = property(lambda self: self.loader.device)
    dtype = property(lambda self: self.loader.dtype)
    stats = property(lambda self: self.loader.stats)
    tokenizers = property(lambda self: self.loader.tokenizers)

    def component(self, name: str) -> Any:
        return self.loader.component(name)

    def load_all(self) -> None:
        self.loader.load_all()

    def release(self, *names: str) -> None:
        self.loader.release(*names)

    @property
    def prompt_cache(self) -> PromptCache | None:
        """Speaker prompts encoded once (`core.prompt_cache`); engines may share one."""
        return self.loader.tokenizers.prompt_cache

    @prompt_cache.setter
    def prompt_cache(self, cache: PromptCache | None) -> None:
        self.loader.tokenizers.prompt_cache = cache

    # -- streaming --------------------------------------------------------------------------------
    def stream(
        self,
        job: Job,
        decoding: Decoding,
        cancelled: Callable[[], bool] | None = None,
        info: dict | None = None,
    ) -> Iterator[np.ndarray]:
        """One job's output as (N,) float32 24 kHz blocks, each yielded as soon as it is made.

        TTS: the text's pieces (`longform.stream_piece_jobs`: the first sentence alone, then
        pieces of at most `max_chars`), each a seeded run of its own like the long-text path;
        SE/TSE/VC inputs longer than a chunk: their chunks as the long path makes them; anything
        else: one block. `cancelled` is checked between blocks and decoding steps (raises
        `errors.Cancelled`); errors are raised as they happen (nothing is written)."""
        info = {} if info is None else info
        if self.spec.long_text and self.longform.options.enabled:
            pjobs = stream_piece_jobs(job, self.longform.options.max_chars)
            info.update(chunks=len(pjobs))
            for i, pjob in enumerate(pjobs):
                check_cancelled(cancelled)
                yield piece_fades(self.generate_one(pjob, decoding, cancelled, info), i, len(pjobs))
        elif self.longform.is_long(job):
            yield from self.longform.blocks(job, decoding, info, cancelled=cancelled)
        else:
            yield self.generate_one(job, decoding, cancelled, info)

    def generate_one(
        self,
        job: Job,
        decoding: Decoding,
        cancelled: Callable[[], bool] | None = None,
        info: dict | None = None,
    ) -> np.ndarray:
        """One short job at batch size 1 → (N,) float32 at 24 kHz (the values `run` gives it);
        errors are raised. `info` gets the input's length and the conditions' info."""
        conds = self.generator.conditions(job)
        (_,), (codes,) = self.generator.codes([(job, conds)], decoding, cancelled)
        wav = self.generator.decode(codes)
        if info is not None:
            info["audio_seconds"] = conds.audio_seconds
            info.update({k: v for k, v in conds.info.items() if v})
        return wav.astype(np.float32, copy=False)

    # -- running ----------------------------------------------------------------------------------
    def run(
        self,
        jobs: Iterable[Job],
        decoding: Decoding,
        write: bool = True,
        keep: bool = False,
        on_chunk: Callable[[Any], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[JobResult]:
        """Process jobs in batches of `options.batch_size`; yields one result per job, in order.

        write: write each output to `job.output` (atomically; "-" = stdout) as it finishes.
        keep: also return the waveform in `JobResult.wav` (always with write=False).
        on_chunk: gets a `chunks.ChunkProgress` after each chunk of a long input.
        cancelled: checked between chunks and decoding steps; once true, the running jobs fail
        with `errors.Cancelled`.
        """
        keep = keep or not write
        batch: list[Job] = []
        for job in jobs:
            if self.longform.is_long(job):
                if batch:
                    yield from self._run_batch(batch, decoding, write, keep, cancelled)
                    batch = []
                yield self._run_long(job, decoding, write, keep, on_chunk, cancelled)
                continue
            batch.append(job)
            if len(batch) >= self.options.batch_size:
                yield from self._run_batch(batch, decoding, write, keep, cancelled)
                batch = []
        if batch:
            yield from self._run_batch(batch, decoding, write, keep, cancelled)

    def _failed(self, job: Job, exc: BaseException, seconds: float = 0.0) -> JobResult:
        log.debug("job %s failed", job.describe(), exc_info=exc)
        return JobResult(
            job,
            None,
            error=one_line(job, exc),
            error_type=type(exc),
            seconds=seconds,
            audio_seconds=_input_seconds(job, self.spec),
        )

    def _run_batch(
        self,
        jobs: list[Job],
        decoding: Decoding,
        write: bool,
        keep: bool,
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[JobResult]:
        t_start = time.perf_counter()
        ready: list[tuple[Job, Conditions]] = []
        done: dict[int, JobResult] = {}
        index: list[int] = []
        for i, job in enumerate(jobs):
            try:
                ready.append((job, self.generator.conditions(job)))
                index.append(i)
            except FATAL:
                raise
            except Exception as exc:
                done[i] = self._failed(job, exc)
        if ready:
            try:
                semantic, codes = (
                    self.generator.codes(ready, decoding)
                    if cancelled is None
                    else self.generator.codes(ready, decoding, cancelled)
                )
                generated: list[Any] = list(zip(semantic, codes, strict=True))
            except FATAL:
                raise
            except Exception as exc:
                if len(ready) == 1:
                    generated = [exc]
                else:  # re-run the batch's items one by one: only the bad one fails
                    log.debug("batch of %d failed (%s); re-running its items one by one", len(ready), exc)
                    generated = [self._codes_alone(item, decoding) for item in ready]
            for i, (job, c), code in zip(index, ready, generated, strict=True):
                if isinstance(code, BaseException):
                    done[i] = self._failed(job, code)
                    done[i].audio_seconds = c.audio_seconds
                    continue
                done[i] = self._finish(job, c, code, write, keep)
        per_job = (time.perf_counter() - t_start) / max(len(jobs), 1)
        for i in range(len(jobs)):
            done[i].seconds = per_job
            yield done[i]

    def _codes_alone(self, item: tuple[Job, Conditions], decoding: Decoding) -> Any:
        try:
            (sem,), (codes,) = self.generator.codes([item], decoding)
            return sem, codes
        except FATAL:
            raise
        except Exception as exc:
            return exc

    def _finish(self, job: Job, c: Conditions, generated: Any, write: bool, keep: bool) -> JobResult:
        sem, codes = generated
        try:
            wav = self.generator.decode(codes)
            out = self.writer.write(job.output if write else None, [wav], keep, job.overwrite)
        except FATAL:
            raise
        except Exception as exc:
            res = self._failed(job, exc)
            res.audio_seconds = c.audio_seconds
            return res
        info = {"semantic_frames": int(sem.shape[0]), "acoustic_frames": int(codes.shape[0]), **c.info}
        if not info.get("warnings"):
            info.pop("warnings", None)
        return JobResult(job, out.wav, audio_seconds=c.audio_seconds, output_samples=out.samples, info=info)

    def _run_long(
        self,
        job: Job,
        decoding: Decoding,
        write: bool,
        keep: bool,
        on_chunk: Callable | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> JobResult:
        """One long job, chunk by chunk with bounded memory, written as it is generated."""
        t0 = time.perf_counter()
        info: dict[str, Any] = {}
        try:
            blocks = self.longform.blocks(job, decoding, info, on_chunk, cancelled)
            out = self.writer.write(job.output if write else None, blocks, keep, job.overwrite)
        except FATAL:
            raise
        except Exception as exc:
            res = self._failed(job, exc, time.perf_counter() - t0)
            res.audio_seconds = info.get("audio_seconds", res.audio_seconds)
            return res
        return JobResult(
            job,
            out.wav,
            seconds=time.perf_counter() - t0,
            audio_seconds=info.pop("audio_seconds", None),
            output_samples=out.samples,
            info=info,
        )


def _input_seconds(job: Job, spec: Any) -> float | None:
    """The main input's duration when it can be read cheaply, else None."""
    from metis_cli.media.audio import probe

    role = spec.inputs[0]
    src = job.inputs.get(role)
    if src is None or spec.needs_visual or spec.needs_text:
        return None
    try:
        return round(probe(src).seconds, 3)
    except Exception:  # unreadable: the report says null
        return None


__all__ = [
    "DTYPES",
    "Decoding",
    "Engine",
    "EngineOptions",
    "FATAL",
    "JobResult",
    "ModelLoader",
    "Path",
    "peak_rss_bytes",
    "resolve_device",
]

"""Python API: `metis_cli.load(task, ...)` returns a `Pipeline`; nothing here prints.

>>> import metis_cli
>>> se = metis_cli.load("se")                      # official Metis SE LoRA, fp32 reference mode
>>> wav = se("noisy.wav", seed=0).wav              # (N,) float32 at 24 kHz
>>> wav = se(metis_cli.AudioArray(samples, 16000)).wav   # in-memory audio
>>> for report in se.run(jobs): ...                # many jobs, one model load, atomic outputs

`load` takes the same option names as the CLI (`metis_cli.options`): steps, cfg, temperature,
s2a_steps ("N" or "A,B"), s2a_temperature, device, dtype, attention, fused_cfg, batch_size,
low_memory, chunk_seconds, overlap_seconds, context_seconds, max_chars, model, checkpoint_dir,
offline, visual_checkpoint; plus the finer `engine.Decoding` fields (rescale_cfg, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from metis_cli import jobs as J
from metis_cli import options as O
from metis_cli.assets.cards import ModelStore
from metis_cli.constants import CODEC_SAMPLE_RATE
from metis_cli.core.tasks import Job
from metis_cli.engine import Decoding, Engine, JobResult
from metis_cli.errors import InputError, MetisError, UsageError

random_seed = J.random_seed
TEXT_IN_REPORT = 80  # characters of a TTS text shown in its report


@dataclass
class Report:
    """What happened to one job (what `--json` prints)."""

    inputs: dict[str, str]
    output: str
    seed: int | None
    status: str  # "ok" | "error" | "skipped"
    error: str | None = None
    steps: int | None = None
    audio_seconds: float | None = None  # the main input's length (None: never read)
    output_seconds: float | None = None
    processing_seconds: float | None = None
    origin: str | None = None  # manifest line ("jobs.csv:3") for manifest jobs
    id: str | None = None  # the manifest's "id" field
    text: str | None = None  # TTS: the first 80 characters of the text
    info: dict[str, Any] = field(default_factory=dict)
    error_type: type[BaseException] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("error_type")
        for k in ("origin", "id", "text"):
            if d[k] is None:
                d.pop(k)
        return d


@dataclass
class Result:
    """Output of a single call."""

    wav: np.ndarray  # (N,) float32 at `sample_rate`
    sample_rate: int
    seed: int
    info: dict[str, Any]


def _inputs_text(inputs: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in inputs.items()}


class Pipeline:
    """A loaded task: call it on one input, or `run` it over many jobs."""

    def __init__(self, engine: Engine, decoding: Decoding) -> None:
        self.engine = engine
        self.decoding = decoding
        self.task = engine.task

    # -- one job ------------------------------------------------------------------------------------
    def __call__(self, *inputs: Any, seed: int | None = None, **kwargs: Any) -> Result:
        """Run one job and return its waveform (nothing is written). Inputs in the task's order
        (se: noisy; vc: source, reference; tse: mix, enrolment; tts: prompt; l2s: video[, prompt]):
        paths or `AudioArray`s (a (N,) numpy array needs a sample rate: wrap it in `AudioArray`).
        Keywords: the job fields of `jobs.make_job` (text, prompt_text, language, prompt_language,
        duration) and decoding overrides (steps, cfg, ...). Raises the job's own `MetisError`
        subclass on bad input."""
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k in J.JOB_FIELDS}
        job = self.make_job(inputs, "<memory>", seed, **fields)
        dec = self._decoding(**kwargs)
        (res,) = list(self.engine.run([job], dec, write=False))
        if not res.ok:
            cls = res.error_type if res.error_type and issubclass(res.error_type, MetisError) else MetisError
            raise cls(res.error)
        return Result(res.wav, CODEC_SAMPLE_RATE, job.seed, res.info)

    def make_job(
        self,
        inputs: Iterable[Any] | Mapping[str, Any],
        output: str | Path,
        seed: int | None = None,
        **fields: Any,
    ) -> Job:
        """A validated job for this task (`jobs.make_job`; `fields`: text, prompt_text, language,
        prompt_language, duration). `inputs`: files or `AudioArray`s in the task's role order, or
        {role: file}."""
        if isinstance(inputs, np.ndarray) or (
            not isinstance(inputs, Mapping) and any(isinstance(p, np.ndarray) for p in inputs)
        ):
            raise InputError(
                "a numpy array input needs its sample rate: pass AudioArray(samples, sample_rate)"
            )
        unknown = [k for k in fields if k not in J.JOB_FIELDS]
        if unknown:
            raise UsageError(f"unknown job field(s): {', '.join(unknown)} (known: {', '.join(J.JOB_FIELDS)})")
        return J.make_job(self.task, inputs, output, seed, **fields)

    def _decoding(self, **overrides: Any) -> Decoding:
        return replace(self.decoding, **_decoding_overrides(overrides))

    # -- many jobs ------------------------------------------------------------------------------------
    def plan(self, request: J.Request) -> J.Plan:
        """Plan a request with the CLI's rules (`jobs.plan`)."""
        return J.plan(request)

    def run(
        self,
        jobs: Iterable[Job] | J.Plan,
        existing: str = "error",
        on_report: Callable[[Report], None] | None = None,
        on_chunk: Callable[[Any], None] | None = None,
        on_start: Callable[[Job], None] | None = None,
        **decoding: Any,
    ) -> Iterator[Report]:
        """Run jobs with one model load; write each output atomically as it finishes.

        jobs: `Job`s (checked here like the CLI's: two jobs writing one file, or a job writing
        another's input, raise UsageError before anything runs) or a `jobs.Plan`.
        existing: what to do when an output file exists: "error" (default: the job fails, the
        file is kept), "overwrite", or "skip". An output that is one of the job's inputs always
        fails. A failed job never stops the others. Long inputs (docs/LONGFORM.md) are written
        chunk by chunk; `on_chunk` gets a `longform.ChunkProgress` per chunk. `on_start` is called
        with each job just before it runs (a batch's jobs together).
        """
        dec = self._decoding(**decoding)
        plan = jobs if isinstance(jobs, J.Plan) else J.plan_jobs(self.task, jobs, existing)
        runnable = plan.jobs
        self.engine.on_chunk = on_chunk
        try:
            results = self.engine.run(runnable if on_start is None else _announced(runnable, on_start), dec)
            for item in plan.items:
                rep = self._finish(next(results), dec) if isinstance(item, Job) else self._rejected(item)
                if on_report is not None:
                    on_report(rep)
                yield rep
        finally:
            self.engine.on_chunk = None

    def _report(self, job: Job, status: str, error: str | None = None) -> Report:
        return job_report(job, status, error, self.decoding.steps)

    def _rejected(self, item: J.Rejected) -> Report:
        return rejected_report(item, self.decoding.steps)

    def _finish(self, res: JobResult, dec: Decoding) -> Report:
        rep = self._report(res.job, "ok" if res.ok else "error", res.error)
        rep.error_type = res.error_type
        rep.steps = dec.steps
        rep.processing_seconds = round(res.seconds, 3)
        rep.audio_seconds = None if res.audio_seconds is None else round(res.audio_seconds, 3)
        if res.output_samples is not None:
            rep.output_seconds = round(res.output_samples / CODEC_SAMPLE_RATE, 3)
        rep.info = res.info
        return rep


def _announced(jobs: Iterable[Job], on_start: Callable[[Job], None]) -> Iterator[Job]:
    """The jobs, calling `on_start` as the engine takes each one (just before it runs)."""
    for job in jobs:
        on_start(job)
        yield job


def job_report(job: Job, status: str, error: str | None = None, steps: int | None = None) -> Report:
    """The report of a job before or without running it (rejected, skipped, remote)."""
    return Report(
        inputs=_inputs_text(job.inputs),
        output=str(job.output),
        seed=job.seed,
        status=status,
        error=error,
        steps=steps,
        origin=job.origin,
        id=job.job_id,
        text=job.text[:TEXT_IN_REPORT] if job.text else None,
    )


def rejected_report(item: J.Rejected, steps: int | None = None) -> Report:
    """The report of a planned item that does not run (a bad manifest line, an existing output)."""
    if item.job is not None:
        rep = job_report(item.job, item.status, item.error or None, steps)
    else:
        rep = Report(item.inputs, item.output or "", None, item.status, item.error, origin=item.origin)
    rep.error_type = item.error_type if item.status == "error" else None
    return rep


def _decoding_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """Decoding keywords (CLI names and `Decoding` fields) → validated `Decoding` overrides."""
    cli = {k: v for k, v in values.items() if k in O.DecodingOptions.__dataclass_fields__}
    fine = {k: v for k, v in values.items() if k not in cli}
    bad = [k for k in fine if k not in Decoding.__dataclass_fields__]
    if bad:
        raise UsageError(f"unknown decoding option(s): {', '.join(bad)}")
    out = {k: v for k, v in fine.items() if v is not None}
    for k in ("s2a_steps_1layer", "s2a_steps_full"):
        if k in out:
            out[k] = tuple(out[k])
            for s in out[k]:
                O.at_least(1, int, O.MAX_STEPS)(k, s)
    out.update(O.build(O.DecodingOptions, cli).overrides())
    return out


def set_threads(threads: int | None) -> int:
    """Set torch's CPU threads (`threads`; None leaves them) and return the count in use. The
    inter-op pool can be sized only before torch's first parallel work: later it stays."""
    import torch

    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:
            pass
    return torch.get_num_threads()


_LOAD_GROUPS = (O.ModelOptions, O.EngineOptions, O.LongformOptions)


def load(task: str, model: str | None = None, **kwargs: Any) -> Pipeline:
    """Build a pipeline for `task` ("tts", "vc", "tse", "se", "l2s").

    model: a card name (`metis models` lists them) or a fine-tuned model folder; default: the
    task's official model. Keywords: the CLI's option names (module docstring; each documented
    in `metis_cli.options`), validated before anything loads (a bad value or an unknown name is
    a `UsageError`). Defaults are the exact reference mode (fp32, eager attention, separate CFG
    passes, batch size 1). Long inputs (docs/LONGFORM.md): SE/TSE/VC inputs longer than
    `chunk_seconds` (0 = never) run in chunks; TTS texts longer than `max_chars` are split at
    sentence boundaries. `bf16_cache`: with `dtype="bfloat16"`, keep converted weights in
    `$METIS_CACHE_DIR/bf16` (`weight_cache`). `threads`: torch's CPU threads for this process
    (default: `options.default_threads`, i.e. cores / local processes under a launcher).
    """
    if model is not None:
        kwargs["model"] = model
    known = {n for g in _LOAD_GROUPS for n in O.names(g)}
    decoding = {k: kwargs.pop(k) for k in list(kwargs) if k not in known}
    dec_overrides = _decoding_overrides(decoding)
    groups = O.split(kwargs, _LOAD_GROUPS)
    m: O.ModelOptions = groups[O.ModelOptions]
    eng_opts: O.EngineOptions = groups[O.EngineOptions]
    set_threads(O.resolve_threads(eng_opts.threads))
    if eng_opts.visual_checkpoint is not None:
        eng_opts = replace(eng_opts, visual_checkpoint=Path(eng_opts.visual_checkpoint))
    engine = Engine(
        task, m.model, ModelStore(m.checkpoint_dir, m.offline), eng_opts, groups[O.LongformOptions]
    )
    return Pipeline(engine, Decoding.from_card(engine.card, task, **dec_overrides))


__all__ = ["Pipeline", "Report", "Result", "job_report", "load", "rejected_report", "set_threads"]

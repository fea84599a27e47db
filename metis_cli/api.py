"""Python API: `metis_cli.load(task, ...)` returns a `Pipeline`; nothing here prints.

>>> import metis_cli
>>> se = metis_cli.load("se")                      # official Metis SE LoRA, fp32 reference mode
>>> wav = se("noisy.wav", seed=0).wav              # (N,) float32 at 24 kHz
>>> for report in se.run(jobs): ...                # many jobs, one model load, atomic outputs
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import audio
from .cards import ModelStore
from .constants import CODEC_SAMPLE_RATE
from .engine import Decoding, Engine, EngineOptions, JobResult
from .errors import InputError, MetisError
from .tasks import TASKS, Job


def random_seed() -> int:
    return secrets.randbelow(2**31 - 1)


@dataclass
class Report:
    """What happened to one job (what `--json` prints)."""

    inputs: dict[str, str]
    output: str
    seed: int
    status: str  # "ok" | "error" | "skipped"
    error: str | None = None
    steps: int | None = None
    audio_seconds: float | None = None
    output_seconds: float | None = None
    processing_seconds: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Result:
    """Output of a single call."""

    wav: np.ndarray  # (N,) float32 at `sample_rate`
    sample_rate: int
    seed: int
    info: dict[str, Any]


class Pipeline:
    """A loaded task: call it on one input, or `run` it over many jobs."""

    def __init__(self, engine: Engine, decoding: Decoding) -> None:
        self.engine = engine
        self.decoding = decoding
        self.task = engine.task

    # -- one job ------------------------------------------------------------------------------------
    def __call__(
        self,
        *inputs: str | Path,
        seed: int | None = None,
        text: str | None = None,
        prompt_text: str | None = None,
        language: str | None = None,
        prompt_language: str | None = None,
        duration: float | None = None,
        **decoding: Any,
    ) -> Result:
        """Run one job. Inputs in the task's order (se: noisy; vc: source, reference;
        tse: mix, enrolment; tts: prompt; l2s: video[, prompt]). Raises MetisError on bad input."""
        job = self.make_job(
            inputs, Path(os.devnull), seed, text, prompt_text, language, prompt_language, duration
        )
        dec = self._decoding(**decoding)
        (res,) = list(self.engine.run([job], dec))
        if not res.ok:
            raise MetisError(res.error)
        return Result(res.wav, CODEC_SAMPLE_RATE, job.seed, res.info)

    def make_job(
        self,
        inputs: Iterable[str | Path] | Mapping[str, str | Path],
        output: str | Path,
        seed: int | None = None,
        text: str | None = None,
        prompt_text: str | None = None,
        language: str | None = None,
        prompt_language: str | None = None,
        duration: float | None = None,
    ) -> Job:
        """A job for this task. `inputs`: files in the task's role order, or {role: file}."""
        spec = TASKS[self.task]
        roles = spec.inputs + spec.optional_inputs
        if isinstance(inputs, Mapping):
            by_role = {r: Path(p) for r, p in inputs.items() if p not in (None, "")}
        else:
            files = [Path(p) for p in inputs]
            if len(files) > len(roles):
                raise InputError(
                    f"task '{self.task}' takes inputs {', '.join(roles)}; got {len(files)} file(s)"
                )
            by_role = dict(zip(roles[: len(files)], files, strict=True))  # trailing optional roles absent
        unknown = [r for r in by_role if r not in roles]
        missing = [r for r in spec.inputs if r not in by_role]
        if unknown or missing:
            raise InputError(
                f"task '{self.task}' takes inputs {', '.join(roles)}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(unknown)}" if unknown else "")
            )
        return Job(
            task=self.task,
            inputs=by_role,
            output=Path(output),
            seed=random_seed() if seed is None else int(seed),
            text=text,
            prompt_text=prompt_text,
            language=None if language in (None, "auto") else language,
            prompt_language=None if prompt_language in (None, "auto") else prompt_language,
            duration=duration,
        )

    def _decoding(self, **overrides: Any) -> Decoding:
        from dataclasses import replace

        bad = [k for k in overrides if k not in Decoding.__dataclass_fields__]
        if bad:
            raise InputError(f"unknown decoding option(s): {', '.join(bad)}")
        return replace(self.decoding, **{k: v for k, v in overrides.items() if v is not None})

    # -- many jobs ------------------------------------------------------------------------------------
    def run(
        self,
        jobs: Iterable[Job],
        existing: str = "error",
        on_report: Callable[[Report], None] | None = None,
        on_chunk: Callable[[Any], None] | None = None,
        **decoding: Any,
    ) -> Iterator[Report]:
        """Run jobs with one model load; write each output atomically as it finishes.

        existing: what to do when an output file exists: "error" (default: the job fails,
        the file is kept), "overwrite", or "skip". An output that is one of the job's inputs
        always fails. A failed job never stops the others. Long inputs (docs/LONGFORM.md) are
        written chunk by chunk as they finish; `on_chunk` gets a `longform.ChunkProgress` per chunk.
        """
        dec = self._decoding(**decoding)
        todo: list[Job] = []
        early: dict[int, Report] = {}
        jobs = list(jobs)
        for i, job in enumerate(jobs):
            problem = self._check_output(job, existing)
            if problem is not None:
                early[i] = problem
            else:
                todo.append(job)
        self.engine.on_chunk = on_chunk
        try:
            results = self.engine.run(todo, dec, stream=True)
            for i in range(len(jobs)):
                rep = early.get(i) or self._finish(next(results), dec)
                if on_report is not None:
                    on_report(rep)
                yield rep
        finally:
            self.engine.on_chunk = None

    def _report(self, job: Job, status: str, error: str | None = None) -> Report:
        return Report(
            inputs={k: str(v) for k, v in job.inputs.items()},
            output=str(job.output),
            seed=job.seed,
            status=status,
            error=error,
            steps=self.decoding.steps,
        )

    def _check_output(self, job: Job, existing: str) -> Report | None:
        out = job.output.resolve()
        if any(out == Path(p).resolve() for p in job.inputs.values()):
            return self._report(job, "error", f"{job.output}: output would overwrite an input file")
        if out.exists():
            if existing == "skip":
                return self._report(job, "skipped")
            if existing != "overwrite":
                return self._report(
                    job, "error", f"{job.output}: exists (use --overwrite or --skip-existing)"
                )
        if not out.parent.is_dir():
            return self._report(job, "error", f"{job.output}: output folder does not exist")
        if not os.access(out.parent, os.W_OK):
            return self._report(job, "error", f"{job.output}: output folder is not writable")
        return None

    def _finish(self, res: JobResult, dec: Decoding) -> Report:
        rep = self._report(res.job, "ok" if res.ok else "error", res.error)
        rep.steps = dec.steps
        rep.processing_seconds = round(res.seconds, 3)
        rep.audio_seconds = round(res.audio_seconds, 3)
        rep.info = res.info
        if res.ok and res.info.get("streamed"):  # long input: the engine wrote it chunk by chunk
            rep.output_seconds = round(res.info["output_samples"] / CODEC_SAMPLE_RATE, 3)
        elif res.ok:
            try:
                audio.write_wav_atomic(res.job.output, res.wav, CODEC_SAMPLE_RATE)
                rep.output_seconds = round(len(res.wav) / CODEC_SAMPLE_RATE, 3)
            except (OSError, MetisError) as exc:
                rep.status, rep.error = "error", f"{res.job.output}: cannot write ({exc})"
        return rep


def load(
    task: str,
    model: str | None = None,
    *,
    device: str = "auto",
    dtype: str = "float32",
    checkpoint_dir: str | Path | None = None,
    offline: bool | None = None,
    attention: str = "eager",
    fused_cfg: bool = False,
    batch_size: int = 1,
    low_memory: bool = False,
    bf16_cache: bool = True,
    visual_checkpoint: str | Path | None = None,
    chunk_seconds: float = 20.0,
    overlap_seconds: float = 1.0,
    context_seconds: float = 2.0,
    max_chars: int = 300,
    **decoding: Any,
) -> Pipeline:
    """Build a pipeline for `task` ("tts", "vc", "tse", "se", "l2s").

    model: a card name (`metis models` lists them) or a fine-tuned model folder; default: the
    task's official model. Defaults are the exact reference mode (fp32, eager attention,
    separate CFG passes, batch size 1). `decoding` overrides the card's defaults
    (steps, cfg, temperature, s2a_steps_1layer, ...). Long inputs (docs/LONGFORM.md): SE/TSE/VC
    inputs longer than `chunk_seconds` (0 = never) run in chunks joined by `overlap_seconds`
    crossfades (SE carries `context_seconds` of output tokens as the next prompt); TTS texts
    longer than `max_chars` are split at sentence boundaries. `bf16_cache`: with
    `dtype="bfloat16"`, keep converted weights in `$METIS_CACHE_DIR/bf16` (`weight_cache`).
    """
    options = EngineOptions(
        device=device,
        dtype=dtype,
        attention=attention,
        fused_cfg=fused_cfg,
        batch_size=max(1, int(batch_size)),
        low_memory=low_memory,
        bf16_cache=bf16_cache,
        visual_checkpoint=Path(visual_checkpoint) if visual_checkpoint else None,
        chunk_seconds=float(chunk_seconds),
        overlap_seconds=float(overlap_seconds),
        context_seconds=float(context_seconds),
        max_chars=int(max_chars),
    )
    engine = Engine(task, model, ModelStore(checkpoint_dir, offline), options)
    return Pipeline(engine, Decoding.from_card(engine.card, task, **decoding))

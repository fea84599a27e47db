"""Python API: `metis_cli.load(task, ...)` returns a `Pipeline`; nothing here prints.

>>> import metis_cli
>>> se = metis_cli.load("se")                      # official Metis SE LoRA, fp32 reference mode
>>> wav = se("noisy.wav", seed=0).wav              # (N,) float32 at 24 kHz
>>> wav = se(metis_cli.AudioArray(samples, 16000)).wav   # in-memory audio
>>> for report in se.run(jobs): ...                # many jobs, one model load, atomic outputs
>>> for res in se.generate(jobs): ...              # many jobs, audio kept in memory, nothing written

`load` takes the same option names as the CLI (`metis_cli.options`): steps, cfg, temperature,
s2a_steps ("N" or "A,B"), s2a_temperature, device, dtype, attention, fused_cfg, batch_size,
low_memory, chunk_seconds, overlap_seconds, context_seconds, max_chars, model, checkpoint_dir,
offline, visual_checkpoint; plus the finer `engine.Decoding` fields (rescale_cfg, ...).

Every error this API raises is a `MetisError` subclass (bad arguments: `UsageError`; bad inputs:
`InputError`, `AudioError`, ...) whose message names the API's arguments (`checkpoint_dir=`,
`existing='overwrite'`), never the CLI's flags.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from metis_cli import jobs as planning
from metis_cli import options
from metis_cli.assets.cards import ModelStore
from metis_cli.constants import CODEC_SAMPLE_RATE
from metis_cli.core.prompt_cache import PromptCache, content_hash
from metis_cli.core.tasks import TASKS, Job
from metis_cli.engine import FATAL, Decoding, Engine, JobResult, one_line
from metis_cli.engine.longform import piece_fades, stream_piece_jobs
from metis_cli.errors import InputError, MetisError, UsageError

random_seed = planning.random_seed
TEXT_IN_REPORT = 80  # characters of a TTS text shown in its report
EXISTING_CHOICES = ("error", "overwrite", "skip")
WORDINGS = ("api", "cli")  # whose names messages use: the API's arguments or the CLI's flags

# CLI flags in messages from the layers below → this API's arguments
_API_PHRASES = (
    ("--overwrite or --skip-existing", "existing='overwrite' or existing='skip'"),
    ("--overwrite", "existing='overwrite'"),
    ("--skip-existing", "existing='skip'"),
    ("--offline", "offline=True"),
)
# a flag starts a word (a path such as /tmp/--x/a.wav is left alone)
_FLAG = re.compile(r"(?<![^\s(`'\"])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")


def api_wording(message: str) -> str:
    """A message with the CLI's flags named as this API's arguments: "pass --checkpoint-dir" →
    "pass checkpoint_dir=...", "--steps: must be >= 1" → "steps: must be >= 1"."""
    for flag, arg in _API_PHRASES:
        message = message.replace(flag, arg)
    message = re.sub(
        r"\bpass --([a-z][a-z0-9-]*)", lambda m: f"pass {m.group(1).replace('-', '_')}=...", message
    )
    return _FLAG.sub(lambda m: m.group(1).replace("-", "_"), message)


@contextlib.contextmanager
def _worded(wording: str) -> Iterator[None]:
    """MetisErrors raised inside, reworded for the API (same class, same traceback)."""
    try:
        yield
    except MetisError as exc:
        if wording == "api" and exc.args and isinstance(exc.args[0], str):
            exc.args = (api_wording(exc.args[0]), *exc.args[1:])
        raise


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


@dataclass
class AudioStream:
    """A streamed job (`Pipeline.stream`): iterate it for (N,) float32 blocks at `sample_rate`,
    each as soon as it is generated. `info` fills as it goes (chunks, audio_seconds, ...)."""

    blocks: Iterator[np.ndarray]
    sample_rate: int
    seed: int
    info: dict[str, Any]

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.blocks

    def close(self) -> None:
        """Stop generating (the rest of the job is not made)."""
        close = getattr(self.blocks, "close", None)
        if close is not None:
            close()


def _inputs_text(inputs: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in inputs.items()}


class Pipeline:
    """A loaded task: call it on one input, `run` it over many jobs (writing files) or
    `generate` (audio in memory). Weights load on first use, or all at once with `warm()`. One
    pipeline may be used from several threads: each call's callbacks are its own."""

    def __init__(self, engine: Engine, decoding: Decoding, wording: str = "api") -> None:
        self.engine = engine
        self._defaults = decoding
        self.task = engine.task
        self.wording = wording  # "cli": messages name the CLI's flags (the `metis` commands)

    # -- what front ends need to know -------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The model card's name ("metis-tts", a fine-tuned model's name, ...)."""
        return self.engine.card.name

    @property
    def device(self) -> str:
        """The torch device the models run on ("cpu", "cuda:0", ...)."""
        return str(self.engine.device)

    @property
    def batch_size(self) -> int:
        """Most jobs per padded batch."""
        return int(self.engine.options.batch_size)

    def warm(self) -> None:
        """Load every model this task needs now (instead of on first use)."""
        self.engine.load_all()

    def decoding(self, **overrides: Any) -> Decoding:
        """The resolved decoding settings: the card's official values for this task with
        `overrides` (the CLI's names: steps, cfg, temperature, s2a_steps, s2a_temperature, or
        `Decoding` fields) applied, each checked against its option's range (UsageError)."""
        return replace(self._defaults, **_decoding_overrides(overrides))

    # -- one job ------------------------------------------------------------------------------------
    def __call__(self, *inputs: Any, seed: int | None = None, **kwargs: Any) -> Result:
        """Run one job and return its waveform (nothing is written). Inputs in the task's order
        (se: noisy; vc: source, reference; tse: mix, enrolment; tts: prompt; l2s: video[, prompt]):
        paths or `AudioArray`s (a (N,) numpy array needs a sample rate: wrap it in `AudioArray`).
        Keywords: the job fields of `jobs.make_job` (text, prompt_text, language, prompt_language,
        duration) and decoding overrides (steps, cfg, ...). Raises the job's own `MetisError`
        subclass on bad input."""
        with _worded(self.wording):
            fields = {k: kwargs.pop(k) for k in list(kwargs) if k in planning.JOB_FIELDS}
            _check_arrays(inputs)
            job = planning.make_job(self.task, inputs, "<memory>", seed, **fields)
            dec = self.decoding(**kwargs)
            (res,) = list(self.generate([job], dec))
            if not res.ok:
                ok_class = res.error_type and issubclass(res.error_type, MetisError)
                raise (res.error_type if ok_class else MetisError)(res.error)
        return Result(res.wav, CODEC_SAMPLE_RATE, job.seed, res.info)

    def make_job(
        self,
        inputs: Any,
        output: str | Path,
        seed: int | None = None,
        **fields: Any,
    ) -> Job:
        """A validated job for this task (`jobs.make_job`; `fields`: text, prompt_text, language,
        prompt_language, duration). `inputs`: one file, or files / `AudioArray`s in the task's role
        order, or {role: file}. `output`: a file, or a folder (an existing one, a name ending in
        "/", or a name without an extension: created, holding `<stem>.wav` as with the CLI's -o)."""
        with _worded(self.wording):
            _check_arrays(inputs)
            unknown = [k for k in fields if k not in planning.JOB_FIELDS]
            if unknown:
                raise UsageError(
                    f"unknown job field(s): {', '.join(unknown)} (known: {', '.join(planning.JOB_FIELDS)})"
                )
            return planning.make_job(self.task, inputs, self._output(inputs, output), seed, **fields)

    def _output(self, inputs: Any, output: Any) -> Any:
        """`output` as the CLI's -o names it: a folder target becomes `folder/<stem>.wav`."""
        if not isinstance(output, (str, os.PathLike)) or str(output) in ("", "-"):
            return output
        target = Path(output)
        spelled_as_folder = str(output).endswith(("/", os.sep))
        if not spelled_as_folder and target.exists() and not target.is_dir():
            return target  # an existing file, /dev/null, a FIFO: written as is
        if not planning.is_folder_target(target):
            return target
        main = _main_input(self.task, inputs)
        stem = self.task if self.task == "tts" or main is None else Path(str(main)).stem
        try:
            target.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise InputError(f"output {str(output)!r}: exists and is not a folder") from None
        except OSError as exc:
            raise InputError(
                f"output {str(output)!r}: cannot create the folder ({exc.strerror or exc})"
            ) from None
        return target / f"{stem}.wav"

    def generate(
        self,
        jobs: Iterable[Job],
        decoding: Decoding | None = None,
        on_chunk: Callable[[Any], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[JobResult]:
        """Run jobs and yield one `JobResult` per job, in order, with its waveform in memory
        (`wav`: (N,) float32 at 24 kHz; None and `error` set when the job failed). Nothing is
        written; `job.output` is only a label. decoding: `decoding(...)`'s settings (default:
        the card's). Jobs run in padded batches of `batch_size`; a failed job never stops the
        others. `on_chunk` gets a `chunks.ChunkProgress` per chunk of a long input. `cancelled`:
        checked between chunks and decoding steps; once true, running jobs fail (`Cancelled`)."""
        dec = self._defaults if decoding is None else decoding
        return self.engine.run(jobs, dec, write=False, keep=True, on_chunk=on_chunk, cancelled=cancelled)

    # -- pieces of work, for schedulers (the service's batcher) ---------------------------------------
    def is_long(self, job: Job) -> bool:
        """Whether the job takes the long path (docs/LONGFORM.md): chunks or text pieces."""
        return self.engine.longform.is_long(job)

    def long_blocks(
        self,
        job: Job,
        decoding: Decoding,
        info: dict[str, Any],
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[np.ndarray]:
        """A long job's output as the long path makes it, block by block ((N,) float32, 24 kHz);
        `info` fills with chunk counts and the input's length; errors are raised."""
        return self.engine.longform.blocks(job, decoding, info, cancelled=cancelled)

    def stream_blocks(
        self,
        job: Job,
        decoding: Decoding,
        cancelled: Callable[[], bool] | None = None,
        info: dict[str, Any] | None = None,
    ) -> Iterator[np.ndarray]:
        """`Engine.stream` of one job: its blocks as they are made (see `stream`)."""
        return self.engine.stream(job, decoding, cancelled, info)

    def stream_jobs(self, job: Job) -> list[Job]:
        """The pieces a streamed TTS job is made of (the first sentence alone, then pieces of at
        most `max_chars`, each with its derived seed); [job] for other tasks or one piece.
        Generate each, pass it through `stream_piece`, and the blocks equal `stream`'s."""
        if not self.engine.spec.long_text or not self.engine.longform.options.enabled:
            return [job]
        return stream_piece_jobs(job, self.engine.longform.options.max_chars)

    @staticmethod
    def stream_piece(wav: np.ndarray, index: int, count: int) -> np.ndarray:
        """Piece `index` of `count` of a streamed TTS text, its joins faded as the long path does."""
        return piece_fades(wav, index, count)

    def failure(self, job: Job, exc: BaseException) -> JobResult | None:
        """The failed `JobResult` a job's exception gives (as `generate` reports it), or None for an
        error about the models themselves (every job would fail)."""
        if isinstance(exc, FATAL):
            return None
        return JobResult(job, None, error=one_line(job, exc), error_type=type(exc))

    @property
    def prompt_cache(self) -> PromptCache | None:
        """Speaker prompts encoded once (`core.prompt_cache.PromptCache`), shared by its jobs."""
        return self.engine.prompt_cache

    @prompt_cache.setter
    def prompt_cache(self, cache: PromptCache | None) -> None:
        self.engine.prompt_cache = cache

    # -- many jobs ------------------------------------------------------------------------------------
    def plan(self, request: planning.Request) -> planning.Plan:
        """Plan a request with the CLI's rules (`jobs.plan`)."""
        with _worded(self.wording):
            return planning.plan(request)

    def run(
        self,
        jobs: Any,
        existing: str = "error",
        on_report: Callable[[Report], None] | None = None,
        on_chunk: Callable[[Any], None] | None = None,
        on_start: Callable[[Job], None] | None = None,
        **decoding: Any,
    ) -> Iterator[Report]:
        """Run jobs with one model load; write each output atomically as it finishes.

        jobs: `Job`s (checked here like the CLI's: two jobs writing one file, or a job writing
        another's input, raise UsageError before anything runs), a `jobs.Plan`, or input files
        (a path, or a list of one job's paths: written where the CLI writes them without -o,
        `<stem>.<suffix>.wav` next to the input).
        existing: what to do when an output file exists: "error" (default: the job fails, the
        file is kept), "overwrite", or "skip". An output that is one of the job's inputs always
        fails. A failed job never stops the others. Long inputs (docs/LONGFORM.md) are written
        chunk by chunk; `on_chunk` gets a `longform.ChunkProgress` per chunk of this call's jobs;
        `on_start` is called with each job just before it runs (a batch's jobs together).
        The arguments are checked now (a bad one raises `UsageError`); the jobs run as the
        returned iterator is consumed.
        """
        with _worded(self.wording):
            if not isinstance(existing, str) or existing not in EXISTING_CHOICES:
                raise UsageError(
                    f"existing: must be one of {', '.join(map(repr, EXISTING_CHOICES))} (got {existing!r})"
                )
            for name, fn in (("on_report", on_report), ("on_chunk", on_chunk)):
                if fn is not None and not callable(fn):
                    raise UsageError(f"{name}: must be a function (got {type(fn).__name__})")
            dec = self.decoding(**decoding)
            plan = (
                jobs
                if isinstance(jobs, planning.Plan)
                else planning.plan_jobs(self.task, self._as_jobs(jobs), existing)
            )
        return self._run(plan, dec, on_report, on_chunk, on_start)

    def _as_jobs(self, jobs: Any) -> list[Job | planning.Rejected]:
        """`run`'s jobs argument as planned items (a job that cannot be made fails alone)."""
        if isinstance(jobs, (str, os.PathLike, Job)) or _is_array(jobs):
            jobs = [jobs]
        if not isinstance(jobs, Iterable) or isinstance(jobs, (bytes, Mapping)):
            raise UsageError(f"jobs: must be Jobs, input paths or a jobs.Plan (got {type(jobs).__name__})")
        items: list[Job | planning.Rejected] = []
        for i, item in enumerate(jobs):
            if isinstance(item, Job):
                if item.task != self.task:
                    raise UsageError(f"jobs[{i}]: a {item.task} job; this pipeline runs {self.task}")
                items.append(item)
            elif isinstance(item, planning.Rejected):
                items.append(item)
            elif isinstance(item, (str, os.PathLike, list, tuple, Mapping)) or _is_array(item):
                items.append(self._job_from_inputs(item))
            else:
                raise UsageError(
                    f"jobs[{i}]: must be a Job, an input path or a list of paths (got {type(item).__name__})"
                )
        return items

    def _job_from_inputs(self, inputs: Any) -> Job | planning.Rejected:
        main = _main_input(self.task, inputs)
        try:
            if main is None or _is_array(main):
                raise InputError("an in-memory input needs an output file: use make_job(inputs, output)")
            return self.make_job(inputs, planning.default_output(self.task, Path(main), None, True))
        except MetisError as exc:
            shown = {"input": str(main)} if main is not None else {}
            return planning.Rejected(str(exc), inputs=shown, error_type=type(exc))

    def _run(
        self,
        plan: planning.Plan,
        dec: Decoding,
        on_report: Callable[[Report], None] | None,
        on_chunk: Callable[[Any], None] | None,
        on_start: Callable[[Job], None] | None = None,
    ) -> Iterator[Report]:
        runnable = plan.jobs if on_start is None else _announced(plan.jobs, on_start)
        results = self.engine.run(runnable, dec, on_chunk=on_chunk)
        for item in plan.items:
            with _worded(self.wording):
                rep = self._finish(next(results), dec) if isinstance(item, Job) else self._rejected(item)
            if self.wording == "api" and rep.error:
                rep.error = api_wording(rep.error)
            if on_report is not None:
                on_report(rep)
            yield rep

    # -- streaming -----------------------------------------------------------------------------------
    def stream(
        self,
        *inputs: Any,
        seed: int | None = None,
        cancel: threading.Event | Callable[[], bool] | None = None,
        **kwargs: Any,
    ) -> AudioStream:
        """One job, streamed (`Engine.stream`): TTS texts sentence by sentence (the first sentence
        alone, the rest in pieces of at most `max_chars`), long SE/TSE/VC inputs chunk by chunk,
        anything else as one block. Inputs and keywords as for a call. `cancel`: an Event or a
        callable, checked between blocks and decoding steps; once set, iterating raises
        `errors.Cancelled` and the rest is not generated. Errors are raised while iterating."""
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k in planning.JOB_FIELDS}
        job = self.make_job(inputs, "<memory>", seed, **fields)
        dec = self.decoding(**kwargs)
        check = cancel.is_set if isinstance(cancel, threading.Event) else cancel
        info: dict[str, Any] = {}
        return AudioStream(self.engine.stream(job, dec, check, info), CODEC_SAMPLE_RATE, job.seed, info)

    def _report(self, job: Job, status: str, error: str | None = None) -> Report:
        return job_report(job, status, error, self._defaults.steps)

    def _rejected(self, item: planning.Rejected) -> Report:
        return rejected_report(item, self._defaults.steps)

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


def _is_array(value: Any) -> bool:
    from metis_cli.media.audio import AudioArray

    return isinstance(value, AudioArray)


def _check_arrays(inputs: Any) -> None:
    """A bare numpy array has no sample rate: say how to pass one."""
    if isinstance(inputs, Mapping):
        values: Iterable[Any] = inputs.values()
    elif isinstance(inputs, (list, tuple)):
        values = inputs
    else:
        values = [inputs]
    if any(isinstance(p, np.ndarray) for p in values):
        raise InputError("a numpy array input needs its sample rate: pass AudioArray(samples, sample_rate)")


def _main_input(task: str, inputs: Any) -> Any:
    """The main-role input of a job's inputs (None when there is none)."""
    if isinstance(inputs, Mapping):
        return inputs.get(TASKS[task].inputs[0])
    if isinstance(inputs, (list, tuple)):
        return inputs[0] if inputs else None
    return inputs


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


def rejected_report(item: planning.Rejected, steps: int | None = None) -> Report:
    """The report of a planned item that does not run (a bad manifest line, an existing output)."""
    if item.job is not None:
        rep = job_report(item.job, item.status, item.error or None, steps)
    else:  # a manifest row that never became a job: every field the row had, to match it by
        text = item.text[:TEXT_IN_REPORT] if item.text else None
        rep = Report(
            item.inputs,
            item.output or "",
            item.seed,
            item.status,
            item.error,
            steps=steps,
            origin=item.origin,
            id=item.job_id,
            text=text,
        )
    rep.error_type = item.error_type if item.status == "error" else None
    return rep


def _decoding_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """Decoding keywords (CLI names and `Decoding` fields) → validated `Decoding` overrides."""
    cli = {k: v for k, v in values.items() if k in options.DecodingOptions.__dataclass_fields__}
    fine = {k: v for k, v in values.items() if k not in cli}
    bad = [k for k in fine if k not in Decoding.__dataclass_fields__]
    if bad:
        raise UsageError(f"unknown decoding option(s): {', '.join(bad)}")
    out = {k: v for k, v in fine.items() if v is not None}
    for k in ("s2a_steps_1layer", "s2a_steps_full"):
        if k in out:
            if not isinstance(out[k], (list, tuple)):
                raise UsageError(f"{k}: must be a tuple of step counts (got {out[k]!r})")
            out[k] = tuple(out[k])
            for s in out[k]:
                options.at_least(1, int, options.MAX_STEPS)(k, s)
    out.update(options.build(options.DecodingOptions, cli).overrides())
    return out


# ---- text front ends (what a server checks at start; nothing here downloads) ----------------------------

FRONTEND_MODULES = {"zh": ("jieba", "cn2an", "pypinyin"), "ja": ("pyopenjtalk", "pykakasi")}
FRONTEND_SAMPLES = {"zh": "你好。", "ja": "こんにちは。"}


def text_frontend_problem(language: str) -> str | None:
    """Why the text front end of `language` cannot run here without downloading anything (one
    line naming the fix), or None when it can. Languages without extra resources: None."""
    import importlib.util

    from metis_cli.text import resources

    if language not in FRONTEND_MODULES:
        return None
    missing = [m for m in FRONTEND_MODULES[language] if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"{language}: the text front end needs {', '.join(missing)}: pip install 'metis-cli[{language}]'"
        )
    try:
        if language == "zh":
            resources.zh_frontend_dir()
        else:
            resources.ja_dictionary_dir()
    except MetisError:
        fix = f"run `metis download {language}-frontend`"
        return f"{language}: the text front end's resources are not installed here: {fix}"
    return None


def text_language(text: str, language: str | None = None) -> str:
    """The language whose front end a TTS text goes through (`language`, else detected)."""
    from metis_cli.text import detect_language

    return language if language not in (None, "auto") else detect_language(text)


def needs_frontend(text: str, language: str | None = None) -> set[str]:
    """The front ends with extra resources (zh, ja) that a TTS text needs."""
    lang = text_language(text, language)
    out = {lang} & set(FRONTEND_MODULES)
    if lang in ("zh", "en") and any("\u4e00" <= ch <= "\u9fa5" for ch in text):
        out.add("zh")  # the mixed zh/en path
    return out


def warm_text_frontend(language: str) -> None:
    """Load the front end of `language` now (dictionaries, segmenters), not on a first request."""
    from metis_cli.text import g2p

    g2p(FRONTEND_SAMPLES.get(language, "Hello."), language)


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


_LOAD_GROUPS = (options.ModelOptions, options.EngineOptions, options.LongformOptions)


def load(task: str, model: str | None = None, wording: str = "api", **kwargs: Any) -> Pipeline:
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
    wording: "api" (messages name these arguments) or "cli" (the `metis` commands: messages name
    their flags).
    """
    if wording not in WORDINGS:
        raise UsageError(f"wording: must be 'api' or 'cli' (got {wording!r})")
    with _worded(wording):
        if not isinstance(task, str) or task not in TASKS:
            raise UsageError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
        return _load(task, model, wording, kwargs)


def _load(task: str, model: str | None, wording: str, kwargs: dict[str, Any]) -> Pipeline:
    if model is not None:
        kwargs["model"] = model
    known = {n for g in _LOAD_GROUPS for n in options.names(g)}
    decoding = {k: kwargs.pop(k) for k in list(kwargs) if k not in known}
    dec_overrides = _decoding_overrides(decoding)
    groups = options.split(kwargs, _LOAD_GROUPS)
    m: options.ModelOptions = groups[options.ModelOptions]
    eng_opts: options.EngineOptions = groups[options.EngineOptions]
    set_threads(options.resolve_threads(eng_opts.threads))
    if eng_opts.visual_checkpoint is not None:
        eng_opts = replace(eng_opts, visual_checkpoint=Path(eng_opts.visual_checkpoint))
    engine = Engine(
        task, m.model, ModelStore(m.checkpoint_dir, m.offline), eng_opts, groups[options.LongformOptions]
    )
    return Pipeline(engine, Decoding.from_card(engine.card, task, **dec_overrides), wording)


__all__ = [
    "AudioStream",
    "Decoding",
    "JobResult",
    "Pipeline",
    "PromptCache",
    "Report",
    "Result",
    "api_wording",
    "content_hash",
    "job_report",
    "load",
    "needs_frontend",
    "rejected_report",
    "set_threads",
    "text_frontend_problem",
    "text_language",
    "warm_text_frontend",
]

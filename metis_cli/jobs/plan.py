"""Job planning for every front end (CLI, Python API, service, sharded runs).

Turns what a user gives (files, folders, globs, a JSONL/CSV manifest, one text) into a `Plan`:
an ordered list of items, each a runnable `Job` or an already-decided `Rejected` job (a bad
manifest line, a bad field, an existing output). Planning reads no audio and loads no model,
so every problem it can find is reported before anything runs.

Rules (docs/CLI.md has the user-facing table):
* Arguments: a path that exists is a file name, never a pattern; a folder expands to the audio
  (or video) files directly inside it, sorted (every extension the readers read, `audio_extensions`;
  AppleDouble `._*` files are skipped); only a name that does not exist is globbed. An input whose
  name is not UTF-8, or a symbolic-link loop, fails alone (its job is rejected, the others run).
* Output names: `-o FILE.ext` for one job; `-o DIR` (an existing folder, or a name without an
  audio extension) holds `<stem>.wav` per job; no `-o`: `<stem>.<suffix>.wav` next to each input.
  Inputs with the same stem from different folders mirror their folders under `-o DIR` (never
  outside it, however the inputs are spelled). `-o -` (stdout) takes one job, of any command.
* Seeds: a job without its own seed takes `--seed` (the same seed for every such job); without
  `--seed` each job draws a fresh random seed. The seed used is always reported.
* Cross-job checks (usage errors, before anything runs): two jobs writing one file; a job's
  output that is another job's input.
* Existing outputs: "error" (the job fails, the file is kept), "overwrite" or "skip". The
  policy travels with each job (`Job.overwrite`): without "overwrite", an output that appears
  while the job runs (another run writing into the same folder) is never replaced at placement.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import glob
import logging
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metis_cli import options
from metis_cli.core.tasks import TASKS, Job
from metis_cli.errors import InputError, MetisError, TextError, UsageError
from metis_cli.jobs.manifest import parse_row, read_manifest
from metis_cli.text import check_utf8, clean_text, has_speech

log = logging.getLogger(__name__)

# common containers (PyAV decodes what libsndfile cannot); `audio_extensions()` adds every format
# the installed readers know
AUDIO_EXTENSIONS = frozenset(
    ".wav .flac .ogg .oga .opus .mp3 .m4a .aac .aif .aiff .au .caf .wv .webm .mka .mp4".split()
)
# libsndfile format names that are not also their usual extension
_SNDFILE_ALIASES = {
    "AIFF": (".aif", ".aifc"),
    "AU": (".snd",),
    "NIST": (".sph",),
    "IRCAM": (".sf",),
    "SVX": (".8svx", ".iff"),
    "WAVEX": (".wav",),
    "OGG": (".oga", ".opus"),
}
_NOT_AUDIO_FILES = ("RAW", "MAT4", "MAT5")  # header-less, or Matlab data files: never picked from folders
VIDEO_EXTENSIONS = frozenset(".mp4 .mov .mkv .avi .webm .m4v .mpg .mpeg .wmv .flv".split())
WRITE_EXTENSIONS_DEFAULT = ".wav"

# default output suffix per task: <stem>.<suffix>.wav next to the input
OUTPUT_SUFFIX = {"se": "enhanced", "tse": "tse", "vc": "vc", "l2s": "l2s", "tts": "tts"}


def random_seed() -> int:
    return secrets.randbelow(2**31 - 1)


# ---- plan items -------------------------------------------------------------------------------------


@dataclass
class Rejected:
    """A job that will not run: why, and what is known of it (for its report)."""

    error: str  # one line naming the file/line/field and the problem
    status: str = "error"  # "error" | "skipped"
    job: Job | None = None  # when the job itself was built
    origin: str | None = None  # "jobs.csv:3" for manifest lines
    inputs: dict[str, str] = field(default_factory=dict)
    output: str | None = None
    error_type: type[MetisError] = InputError
    seed: Any = None  # what a manifest row gave (kept in the report so scripts can match rows)
    job_id: str | None = None
    text: str | None = None


@dataclass
class Plan:
    """Planned work, in input order: a `Job` to run or a `Rejected` per item."""

    task: str
    items: list[Job | Rejected]
    warnings: list[str] = field(default_factory=list)

    @property
    def jobs(self) -> list[Job]:
        return [i for i in self.items if isinstance(i, Job)]

    def __len__(self) -> int:
        return len(self.items)


# ---- arguments → files ------------------------------------------------------------------------------


@functools.cache
def audio_extensions() -> frozenset[str]:
    """Extensions a folder input picks: `AUDIO_EXTENSIONS`, every libsndfile format (its name, as
    `.w64`, `.rf64`, `.caf`) and the extensions of PyAV's audio demuxers."""
    import soundfile

    exts = set(AUDIO_EXTENSIONS)
    for name in soundfile.available_formats():
        if name not in _NOT_AUDIO_FILES:
            exts.add(f".{name.lower()}")
            exts.update(_SNDFILE_ALIASES.get(name, ()))
    try:
        import av
    except ImportError:  # pragma: no cover - PyAV is a dependency
        return frozenset(exts)
    for name in av.formats_available:
        try:
            fmt = av.ContainerFormat(name, "r")
        except (ValueError, av.FFmpegError):
            continue
        about = (fmt.long_name or "").lower()
        if "audio" in about and "video" not in about:
            exts.update(f".{e.strip().lower()}" for e in fmt.extensions if e.strip())
    return frozenset(exts)


def _picked(f: Path, exts: frozenset[str]) -> bool:
    """A folder entry an input folder expands to: a media extension, not a folder, not an
    AppleDouble `._*` companion. Symlink loops and dangling links are kept (their job fails)."""
    return f.suffix.lower() in exts and not f.name.startswith("._") and not _is_dir(f)


def expand_inputs(args: Iterable[str | Path], video: bool = False) -> list[Path]:
    """Files named on the command line: existing paths as they are (names are data, never
    patterns), folders expanded to their media files (sorted), other names globbed."""
    exts = VIDEO_EXTENSIONS if video else audio_extensions()
    kind = "video" if video else "audio"
    out: list[Path] = []
    for arg in args:
        p = Path(arg)
        if _is_dir(p):
            try:
                found = sorted(f for f in p.iterdir() if _picked(f, exts))
            except OSError as exc:
                raise UsageError(f"{p}: cannot list this folder ({exc.strerror or exc})") from None
            if not found:
                shown = ", ".join(sorted(VIDEO_EXTENSIONS if video else AUDIO_EXTENSIONS))
                raise UsageError(f"{p}: no {kind} files in this folder ({shown}, ...)")
            out.extend(found)
        elif _exists(p) or p.is_symlink() or not any(ch in str(arg) for ch in "*?["):
            out.append(p)  # an existing file, or a plain missing name (that job fails: not found)
        else:
            hits = sorted(h for h in glob.glob(str(arg)) if not Path(h).is_dir())
            if not hits:
                raise UsageError(f"{arg}: no file matches")
            out.extend(Path(h) for h in hits)
    return out


def default_output(task: str, main: Path, out: Path | None, many: bool) -> Path:
    """The output of a job whose main input is `main` (module docstring, Output names)."""
    if out is not None and is_stdout(out):
        return out
    if out is not None and not many and not is_folder_target(out):
        return out
    if out is not None:
        return out / f"{main.stem}.wav"
    return main.with_name(f"{main.stem}.{OUTPUT_SUFFIX[task]}.wav")


def is_folder_target(out: Path) -> bool:
    """`-o PATH` names a folder when it is one, ends with a separator, or has no extension."""
    text = str(out)
    return _is_dir(out) or text.endswith(("/", os.sep)) or not out.suffix


def looks_like_output(task: str, path: Path) -> bool:
    return path.name.endswith(f".{OUTPUT_SUFFIX[task]}.wav")


# ---- manifests -----------------------------------------------------------------------------------------


# ---- one job ---------------------------------------------------------------------------------------------


def check_text(text: str | None, what: str = "text") -> str:
    """TTS text: a string, valid UTF-8, non-empty, bounded, with something to pronounce once
    normalised (a letter or a digit), before any front end loads. Returns it without terminal
    control sequences (`text.clean_text`)."""
    if text is not None and not isinstance(text, str):
        raise TextError(f"{what} must be a string (got {type(text).__name__})")
    if text is not None:
        check_utf8(text, what)
        text = clean_text(text)
    if text is None or not text.strip():
        raise TextError(f"{what} is empty")
    if len(text) > options.MAX_TEXT_CHARS:
        raise TextError(f"{what} is {len(text)} characters long (at most {options.MAX_TEXT_CHARS})")
    if not has_speech(text):
        raise TextError(f"{what} {text[:40]!r} has no letters or digits to phonemise")
    return text


def make_job(
    task: str,
    inputs: Iterable[Any] | Mapping[str, Any],
    output: str | Path,
    seed: int | None = None,
    text: str | None = None,
    prompt_text: str | None = None,
    language: str | None = None,
    prompt_language: str | None = None,
    duration: float | None = None,
    origin: str | None = None,
    job_id: str | None = None,
) -> Job:
    """A validated job. `inputs`: files (or `audio.AudioArray`s) in the task's role order, or
    {role: file}; one file alone stands for a one-item list. Raises InputError naming the problem
    (prefixed with `origin` when given): also for inputs that cannot be read by name (not UTF-8,
    a symbolic-link loop)."""
    if not isinstance(task, str) or task not in TASKS:
        raise UsageError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    spec = TASKS[task]
    roles = spec.inputs + spec.optional_inputs
    where = f"{origin}: " if origin else ""
    if isinstance(inputs, (str, os.PathLike)) or _is_audio_array(inputs):
        inputs = [inputs]
    if isinstance(inputs, Mapping):
        by_role = {str(r): _as_input(p, where) for r, p in inputs.items() if p is not None and p != ""}
    elif isinstance(inputs, Iterable) and not isinstance(inputs, (bytes, bytearray)):
        files = [_as_input(p, where) for p in inputs]
        if len(files) > len(roles):
            raise InputError(f"{where}task '{task}' takes inputs {', '.join(roles)}; got {len(files)}")
        by_role = dict(zip(roles[: len(files)], files, strict=True))
    else:
        raise InputError(
            f"{where}inputs must be a path, a list of paths or {{role: path}} (got {type(inputs).__name__})"
        )
    unknown = [r for r in by_role if r not in roles]
    missing = [r for r in spec.inputs if r not in by_role]
    if unknown or missing:
        raise InputError(
            f"{where}task '{task}' takes inputs {', '.join(roles)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(unknown)}" if unknown else "")
        )
    try:
        options.validate(options.JobDefaults(seed=seed))
    except UsageError as exc:
        raise InputError(where + str(exc).replace("--seed", "seed")) from None
    for name, lang in (("language", language), ("prompt_language", prompt_language)):
        if lang is not None and lang not in options.LANGUAGE_CHOICES:
            raise InputError(
                f"{where}{name} must be one of {', '.join(options.LANGUAGE_CHOICES)} (got {lang!r})"
            )
    if spec.needs_text:
        text = check_text(text, f"{where}text")
        prompt_text = check_text(prompt_text, f"{where}prompt_text")
    try:
        options.duration("duration", duration)
    except UsageError as exc:
        raise InputError(f"{where}{exc}") from None
    for p in by_role.values():
        problem = _input_problem(p) if isinstance(p, Path) else None
        if problem:
            raise InputError(f"{where}{problem}")
    if not isinstance(output, (str, os.PathLike)):
        raise InputError(f"{where}output must be a path (got {type(output).__name__})")
    return Job(
        task=task,
        inputs=by_role,
        output=Path(output),
        seed=random_seed() if seed is None else int(seed),
        text=text,
        prompt_text=prompt_text,
        language=None if language in (None, "auto") else language,
        prompt_language=None if prompt_language in (None, "auto") else prompt_language,
        duration=None if duration is None else float(duration),
        origin=origin,
        job_id=job_id,
        seed_drawn=seed is None,
    )


def _is_audio_array(p: Any) -> bool:
    from metis_cli.media.audio import AudioArray

    return isinstance(p, AudioArray)


def _as_input(p: Any, where: str = "") -> Any:
    if _is_audio_array(p):
        return p
    if not isinstance(p, (str, os.PathLike)):
        raise InputError(f"{where}an input must be a path or an AudioArray (got {type(p).__name__})")
    return Path(p)


def _input_problem(p: Path) -> str | None:
    """Why an input file cannot even be opened by name (checked before anything runs)."""
    try:
        str(p).encode("utf-8")
    except UnicodeEncodeError:
        return f"{p}: the file name is not valid UTF-8 (rename the file)"
    try:
        os.stat(p)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{p}: symbolic link loop"
    except ValueError:  # an embedded NUL
        return f"{p}: the file name contains a NUL character"
    return None


# ---- cross-job checks ------------------------------------------------------------------------------------


def _exists(p: Path) -> bool:
    """Path.exists() that is False (not an OSError) for names the filesystem cannot hold."""
    try:
        return p.exists()
    except OSError:
        return False


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:
        return False


def _key(p: Path) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return Path(os.path.normpath(p.absolute()))


def check_conflicts(items: list[Job | Rejected]) -> None:
    """UsageError if two jobs write one file, or a job writes another job's input."""
    jobs = [(i, j) for i, j in enumerate(items) if isinstance(j, Job) and not is_stdout(j.output)]
    writers: dict[Path, int] = {}
    for i, job in jobs:
        key = _key(job.output)
        if key in writers:
            raise UsageError(f"{job.output}: jobs {writers[key] + 1} and {i + 1} write the same output file")
        writers[key] = i
    for i, job in jobs:
        for p in job.inputs.values():
            if isinstance(p, Path) and _key(p) in writers:
                w = writers[_key(p)]
                if w == i:
                    continue  # checked per job (output_problem): the job fails, the others run
                raise UsageError(f"{p}: job {i + 1} reads the file that job {w + 1} writes")


def is_stdout(path: Path) -> bool:
    return str(path) == "-"


def output_problem(job: Job, existing: str) -> Rejected | None:
    """Why this job's output cannot be written (or should be skipped), before it runs."""
    if is_stdout(job.output):
        return None
    out = _key(job.output)

    def reject(msg: str, status: str = "error") -> Rejected:
        return Rejected(msg, status, job=job, origin=job.origin)

    if any(isinstance(p, Path) and out == _key(p) for p in job.inputs.values()):
        return reject(f"{job.output}: output would overwrite an input file")
    try:
        from metis_cli.media.audio import output_format

        output_format(job.output)
    except ImportError:  # pragma: no cover - older audio module
        pass
    except MetisError as exc:
        return reject(str(exc))
    if len(os.fsencode(job.output.name)) > _name_max(job.output.parent):
        return reject(f"{job.output}: file name too long for this filesystem")
    if _exists(out):
        if existing == "skip":
            return reject("", "skipped")
        if existing != "overwrite":
            return reject(f"{job.output}: exists (use --overwrite or --skip-existing)")
    parent = out.parent
    if not _is_dir(parent):
        return reject(f"{job.output}: output folder does not exist")
    if not os.access(parent, os.W_OK):
        return reject(f"{job.output}: output folder is not writable")
    return None


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder if _is_dir(folder) else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


# ---- plans ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What one front-end invocation asks for (before planning)."""

    task: str
    inputs: tuple[str | Path, ...] = ()  # files/folders/globs of the main role (enhance, l2s)
    fixed_inputs: Mapping[str, Any] = field(default_factory=dict)  # other roles, same for every job
    manifest: Path | None = None
    output: Path | None = None  # -o: a file, a folder, or "-" (stdout)
    seed: int | None = None  # for jobs without their own seed
    text: str | None = None
    prompt_text: str | None = None
    language: str | None = "auto"
    prompt_language: str | None = "auto"
    duration: float | None = None
    existing: str = "error"  # "error" | "overwrite" | "skip"


def plan(req: Request) -> Plan:
    """Plan a request: expand inputs or read the manifest, name outputs, check across jobs,
    apply the existing-output policy. Raises UsageError for problems of the whole request."""
    task = req.task
    if task not in TASKS:
        raise UsageError(f"unknown task '{task}' (known: {', '.join(TASKS)})")
    if req.existing not in ("error", "overwrite", "skip"):
        raise UsageError(f"existing: must be error, overwrite or skip (got {req.existing!r})")
    options.validate(options.JobDefaults(seed=req.seed))
    warnings: list[str] = []
    if req.manifest is not None:
        items = _plan_manifest(req)
    else:
        items = _plan_arguments(req, warnings)
    if req.output is not None and is_stdout(req.output) and len(items) != 1:
        raise UsageError(f"-o -: writes one output to stdout; this run has {len(items)} jobs")
    check_conflicts(items)
    return Plan(task, _apply_policy(items, req.existing), warnings)


def plan_jobs(task: str, jobs: Iterable[Job | Rejected], existing: str = "error") -> Plan:
    """A plan of ready-made jobs (Python API): the same cross-job checks and output policy."""
    if existing not in ("error", "overwrite", "skip"):
        raise UsageError(f"existing: must be 'error', 'overwrite' or 'skip' (got {existing!r})")
    items: list[Job | Rejected] = list(jobs)
    check_conflicts(items)
    return Plan(task, _apply_policy(items, existing))


def _apply_policy(items: list[Job | Rejected], existing: str) -> list[Job | Rejected]:
    """Each job checked against its output (`output_problem`), carrying the policy to placement."""
    planned: list[Job | Rejected] = []
    for item in items:
        if isinstance(item, Job):
            item = dataclasses.replace(item, overwrite=existing == "overwrite")
            planned.append(output_problem(item, existing) or item)
        else:
            planned.append(item)
    return planned


def _plan_manifest(req: Request) -> list[Job | Rejected]:
    task = req.task
    spec = TASKS[task]
    rows = read_manifest(req.manifest)
    outdir = req.output
    if outdir is not None and (is_stdout(outdir) or not is_folder_target(outdir)):
        raise UsageError(f"{outdir}: with --manifest, -o must be a folder")
    if outdir is not None:
        _make_folder(outdir)  # a usage error when it cannot be made; rows' own folders fail alone
    items: list[Job | Rejected] = []
    for row in rows:
        if row.problem is not None:
            items.append(Rejected(row.problem, origin=row.origin))
            continue
        try:
            f = parse_row(task, row)
            main = f["inputs"][spec.inputs[0]]
            if "output" in f:
                out = _row_output(f["output"], outdir)
            elif task == "tts":
                out = (outdir or Path(".")) / f"tts-{row.index + 1:05d}.wav"
            else:
                out = default_output(task, main, outdir, True)
            job = make_job(
                task,
                {**req.fixed_inputs, **f["inputs"]},
                out,
                f.get("seed", req.seed),
                f.get("text"),
                f.get("prompt_text"),
                f.get("language", req.language),
                f.get("prompt_language", req.prompt_language),
                f.get("duration"),
                origin=row.origin,
                job_id=f.get("id"),
            )
            _make_row_folder(job.output)
            items.append(job)
        except MetisError as exc:
            msg = str(exc)
            msg = msg if msg.startswith(row.origin) else f"{row.origin}: {msg}"
            items.append(_rejected_row(task, row, msg, outdir, type(exc)))
    return items


def _row_output(output: Path, outdir: Path | None) -> Path:
    """A row's `output` field: under `-o DIR` when relative, and never outside it."""
    if outdir is None or output.is_absolute():
        return output
    joined = Path(os.path.normpath(outdir / output))
    base = os.path.normpath(outdir)
    if base != "." and not str(joined).startswith(base.rstrip(os.sep) + os.sep):
        raise InputError(f"field 'output' {str(output)!r} is outside the -o folder {outdir}")
    if base == "." and (joined.is_absolute() or joined.parts[:1] == ("..",)):
        raise InputError(f"field 'output' {str(output)!r} is outside the -o folder {outdir}")
    return outdir / output


def _make_row_folder(output: Path) -> None:
    """The folder a manifest row's output names is created like `-o`'s (an InputError for that row)."""
    folder = output.parent
    if _is_dir(folder):
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{output}: cannot create the output folder (a file is in the way)") from None
    except OSError as exc:
        raise InputError(f"{output}: cannot create the output folder ({exc.strerror or exc})") from None


def _rejected_row(task: str, row: Any, msg: str, outdir: Path | None, kind: type[MetisError]) -> Rejected:
    """A manifest row that will not run, with every field it had (inputs, output, seed, id, text)
    so that reports can be matched to rows."""
    fields = row.fields or {}
    spec = TASKS[task]
    inputs = {r: str(fields[r]) for r in spec.inputs + spec.optional_inputs if r in fields}
    output = fields.get("output")
    if isinstance(output, str) and output.strip():
        output = str(outdir / output) if outdir is not None and not Path(output).is_absolute() else output
    else:
        output = None
    seed = fields.get("seed")
    if isinstance(seed, str):
        seed = int(seed.strip()) if seed.strip().isdigit() else seed
    text = fields.get("text")
    return Rejected(
        msg,
        origin=row.origin,
        inputs=inputs,
        output=output,
        error_type=kind if issubclass(kind, InputError) else InputError,
        seed=seed,
        job_id=None if fields.get("id") is None else str(fields["id"]),
        text=text[:80] if isinstance(text, str) else None,
    )


def _plan_arguments(req: Request, warnings: list[str]) -> list[Job | Rejected]:
    task = req.task
    spec = TASKS[task]
    main_role = spec.inputs[0]
    if task == "tts" or not req.inputs:
        # one job from the fixed inputs (tts: prompt; vc/tse: both files)
        out = req.output if req.output is not None else Path(f"{task}.wav")
        if req.output is not None and not is_stdout(out) and not is_folder_target(out):
            _check_format(out)
        if req.output is not None and not is_stdout(out) and is_folder_target(out):
            main = Path(str(req.fixed_inputs.get(main_role, task)))
            out = out / (f"{task}.wav" if task == "tts" else f"{main.stem}.wav")
            _make_folder(out.parent)
        elif req.output is None and task != "tts":
            out = default_output(task, Path(str(req.fixed_inputs[main_role])), None, False)
        return [_one(req, dict(req.fixed_inputs), out)]
    files = expand_inputs(req.inputs, video=spec.needs_visual)
    files = _drop_own_outputs(task, files, warnings)
    many = len(files) > 1
    out = req.output
    if out is not None and is_stdout(out):
        if many:
            raise UsageError(f"-o -: writes one output to stdout; {len(files)} inputs given")
    elif out is not None and many and _exists(out) and not _is_dir(out):
        raise UsageError(f"{out}: -o must be a folder when several inputs are given")
    if out is not None and not is_stdout(out) and not many and not is_folder_target(out):
        _check_format(out)
    outputs = _mirrored_outputs(task, files, out, many)
    if out is not None and not is_stdout(out) and (many or is_folder_target(out)):
        _make_folder(out)
        for o in outputs:
            if o.parent != out:
                _make_folder(o.parent)
    return [_one(req, {main_role: f, **req.fixed_inputs}, o) for f, o in zip(files, outputs, strict=True)]


def _one(req: Request, inputs: dict[str, Any], out: Path) -> Job | Rejected:
    try:
        return make_job(
            req.task,
            inputs,
            out,
            req.seed,
            req.text,
            req.prompt_text,
            req.language,
            req.prompt_language,
            req.duration,
        )
    except MetisError as exc:
        return Rejected(
            str(exc),
            inputs={k: str(v) for k, v in inputs.items()},
            output=str(out),
            error_type=type(exc),
        )


def _check_format(out: Path) -> None:
    """`-o FILE.ext` whose format cannot be written: a usage error before anything runs."""
    from metis_cli.media.audio import output_format

    try:
        output_format(out)
    except MetisError as exc:
        raise UsageError(f"-o: {exc}") from None


def _drop_own_outputs(task: str, files: list[Path], warnings: list[str]) -> list[Path]:
    """Skip inputs that are the default output of another input of this run (a rerun of
    `metis enhance dir/*.wav` sees its own earlier outputs); warn about other metis-looking names."""
    own = {_key(default_output(task, f, None, True)) for f in files}
    kept = []
    for f in files:
        if _key(f) in own:
            warnings.append(f"{f}: skipped (it is the metis {task} output of another input)")
            continue
        if looks_like_output(task, f):
            warnings.append(f"{f}: looks like a metis {task} output; processing it anyway")
        kept.append(f)
    if not kept:
        raise UsageError("no inputs left: every input is the output of another input")
    return kept


def _mirrored_outputs(task: str, files: list[Path], out: Path | None, many: bool) -> list[Path]:
    outputs = [default_output(task, f, out, many) for f in files]
    if out is None or is_stdout(out) or not (many or is_folder_target(out)):
        return outputs
    keys = [_key(o) for o in outputs]
    if len(set(keys)) == len(keys):
        return outputs
    # same stems from different folders: mirror each input's folder relative to their common root
    # (lexically normalised: an input spelled with ".." never puts its output outside `out`)
    parents = [Path(os.path.normpath(f.absolute().parent)) for f in files]
    root = Path(os.path.commonpath([str(p) for p in parents]))
    return [out / p.relative_to(root) / f"{f.stem}.wav" for f, p in zip(files, parents, strict=True)]


def _make_folder(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{path}: exists and is not a folder") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot create the output folder ({exc.strerror or exc})") from None

"""Task commands: tts, vc, tse, enhance, l2s. One shared runner; each command only maps its
arguments to jobs."""

from __future__ import annotations

import csv
import glob
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from ..errors import InputError, MetisError

# ---- options shared by every task command ------------------------------------------------------

_MODEL = typer.Option(
    None, "--model", "-m", help="Model card name (see `metis models`) or a fine-tuned model folder."
)
_STEPS = typer.Option(
    None, "--steps", help="Stage-1 decoding steps (default: the model card's official value)."
)
_CFG = typer.Option(None, "--cfg", help="Stage-1 classifier-free guidance scale (0 disables).")
_TEMP = typer.Option(None, "--temperature", help="Stage-1 start temperature (official 0.9).")
_S2A_STEPS = typer.Option(
    None,
    "--s2a-steps",
    help="S2A steps: N or A,B = steps of the 1-layer model, steps of the full model's layer 1 "
    "(official 40,16; the remaining layers take one step each).",
)
_S2A_TEMP = typer.Option(None, "--s2a-temperature", help="S2A temperature (official 1.5).")
_SEED = typer.Option(None, "--seed", help="Random seed (default: random; the seed used is always reported).")
_DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.")
_DTYPE = typer.Option(
    "float32", "--dtype", help="float32 (exact reference mode), bfloat16 (fast mode) or float16 (GPU only)."
)
_BATCH = typer.Option(
    1, "--batch-size", min=1, help="Jobs per padded batch (per-item tokens equal batch size 1)."
)
_ATTN = typer.Option("eager", "--attention", help="eager (reference) or sdpa (fast mode).")
_FUSED = typer.Option(False, "--fused-cfg", help="Fast mode: both CFG passes in one batched forward.")
_LOWMEM = typer.Option(
    False, "--low-memory", help="Free each stage's models as soon as the batch is past it."
)
_CKPT = typer.Option(
    None,
    "--checkpoint-dir",
    envvar="METIS_CHECKPOINT_DIR",
    help="Local weights laid out as <org>/<repo>/<path-in-repo> (default: the Hugging Face cache).",
)
_OFFLINE = typer.Option(False, "--offline", help="Never download (also HF_HUB_OFFLINE=1).")
_OVERWRITE = typer.Option(False, "--overwrite", help="Replace existing output files.")
_SKIP = typer.Option(False, "--skip-existing", help="Skip jobs whose output file exists.")
_JSON = typer.Option(False, "--json", help="Print one JSON object per job on stdout.")
_QUIET = typer.Option(False, "--quiet", "-q", help="No progress or summary on stderr.")
_CHUNK = typer.Option(
    20.0,
    "--chunk-seconds",
    help="Inputs longer than this run in chunks of at most this length (3-30 s; 0 = never).",
)
_OVERLAP = typer.Option(
    1.0, "--overlap-seconds", help="Overlap of neighbouring chunks, joined by an equal-power crossfade."
)
_CONTEXT = typer.Option(
    2.0,
    "--context-seconds",
    help="Enhancement: seconds of the previous chunk's output carried as the next chunk's prompt.",
)
_MAX_CHARS = typer.Option(300, "--max-chars", help="Texts longer than this are spoken sentence by sentence.")
_MANIFEST = typer.Option(
    None, "--manifest", help="Jobs file (.jsonl or .csv), one job per line: input roles, output, text, seed."
)


def _err(msg: str) -> None:
    typer.echo(f"metis: error: {msg}", err=True)


def _parse_s2a_steps(value: str | None) -> dict[str, Any]:
    if value is None:
        return {}
    try:
        parts = [int(p) for p in value.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--s2a-steps must be N or A,B (got {value!r})") from None
    if not 1 <= len(parts) <= 2 or min(parts) < 1:
        raise typer.BadParameter(f"--s2a-steps must be N or A,B with positive integers (got {value!r})")
    a, b = parts[0], parts[-1]
    return {"s2a_steps_1layer": (a,), "s2a_steps_full": (a, b) + (1,) * 10}


def _expand(paths: list[str]) -> list[Path]:
    """Expand globs the shell left alone; keep plain names (a missing file fails per job)."""
    out: list[Path] = []
    for p in paths:
        hits = sorted(glob.glob(p)) if any(ch in p for ch in "*?[") else [p]
        if not hits:
            raise InputError(f"{p}: no file matches")
        out.extend(Path(h) for h in hits)
    return out


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise InputError(f"{path}: manifest not found")
    rows: list[dict[str, Any]] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as fh:
            rows = [dict(r) for r in csv.DictReader(fh)]
    else:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{n}: each line must be a JSON object")
            rows.append(row)
    if not rows:
        raise InputError(f"{path}: no jobs")
    return rows


class Runner:
    """Builds the pipeline once and runs a list of jobs through it, printing as it goes."""

    def __init__(self, task: str, **kw: Any) -> None:
        self.task = task
        self.kw = kw

    def run(
        self, make_jobs: Callable[[Any], list], manifest: Path | None, manifest_job: Callable | None
    ) -> None:
        kw = self.kw
        as_json, quiet = kw.pop("json_out"), kw.pop("quiet")
        overwrite, skip = kw.pop("overwrite"), kw.pop("skip_existing")
        if overwrite and skip:
            _err("give --overwrite or --skip-existing, not both")
            raise typer.Exit(2)
        existing = "overwrite" if overwrite else ("skip" if skip else "error")
        kw["offline"] = kw["offline"] or None  # None: honour HF_HUB_OFFLINE
        decoding = {k: kw.pop(k) for k in ("steps", "cfg", "temperature", "s2a_temperature")}
        decoding.update(_parse_s2a_steps(kw.pop("s2a_steps")))
        if decoding.get("s2a_temperature") is None:
            decoding.pop("s2a_temperature")
        if quiet or not sys.stderr.isatty():  # downloads on first use: no bars when quiet or piped
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        try:
            from ..api import load

            pipe = load(self.task, **kw, **{k: v for k, v in decoding.items() if v is not None})
            jobs = (
                make_jobs(pipe)
                if manifest is None
                else [manifest_job(pipe, r) for r in _read_manifest(manifest)]
            )
        except MetisError as exc:
            _err(str(exc))
            raise typer.Exit(2 if isinstance(exc, InputError) else 1) from None
        seen: dict[Path, int] = {}
        for i, job in enumerate(jobs):
            key = job.output.resolve()
            if key in seen:
                _err(f"{job.output}: jobs {seen[key] + 1} and {i + 1} write the same output file")
                raise typer.Exit(2)
            seen[key] = i
        self._run(pipe, jobs, existing, as_json, quiet)

    def _run(self, pipe: Any, jobs: list, existing: str, as_json: bool, quiet: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True, soft_wrap=True)
        show = not quiet and console.is_terminal
        failures: list[Any] = []
        done = 0
        progress = Progress(
            TextColumn(f"metis {self.task}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not show,
        )
        chunk_bar: list[Any] = []  # the per-chunk bar of the long job in progress, if any

        def on_chunk(p: Any) -> None:  # longform.ChunkProgress after each chunk of a long input
            if not chunk_bar:
                chunk_bar.append(progress.add_task(f"  {Path(p.output).name}", total=p.total))
            progress.update(chunk_bar[0], completed=p.index + 1, total=p.total)

        with progress:
            bar = progress.add_task(self.task, total=len(jobs))
            try:
                for rep in pipe.run(jobs, existing=existing, on_chunk=on_chunk):
                    done += 1
                    progress.advance(bar)
                    if chunk_bar:
                        progress.remove_task(chunk_bar.pop())
                    if as_json:
                        print(json.dumps(rep.to_dict(), ensure_ascii=False), flush=True)
                    elif rep.status == "ok":
                        print(rep.output, flush=True)
                    if rep.status == "error":
                        failures.append(rep)
                        if not quiet:
                            console.print(f"[red]failed[/red] {rep.error}", highlight=False)
                    elif not quiet and not as_json:
                        console.print(f"{rep.status}: {rep.output} (seed {rep.seed})", highlight=False)
            except MetisError as exc:  # a model could not be loaded: nothing more can run
                _err(str(exc))
                raise typer.Exit(1) from None
        if failures:
            if not quiet:
                console.print(f"{len(failures)} of {len(jobs)} job(s) failed:", highlight=False)
                for rep in failures:
                    console.print(f"  {rep.error}", highlight=False)
            raise typer.Exit(1)


def _default_output(main: Path, out: Path | None, suffix: str, many: bool) -> Path:
    """OUT if it is a file name; OUT/<stem>.wav if OUT is a folder (or there are many
    inputs); else <stem>.<suffix>.wav next to the input (never the input itself)."""
    if out is not None and not many and not out.is_dir() and out.suffix:
        return out
    if out is not None:
        return out / f"{main.stem}.wav"
    return main.with_name(f"{main.stem}.{suffix}.wav")


def _outdir_check(out: Path | None, many: bool) -> None:
    if out is not None and many and out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out}: -o must be a folder when several inputs are given")
    if out is not None and (many or not out.suffix) and not out.exists():
        out.mkdir(parents=True, exist_ok=True)


# names in a pair command's locals() that are not engine/decoding options (task and roles are
# the closure's variables)
_NOT_OPTIONS = ("main", "other", "output", "manifest", "task", "roles")


def register(app: typer.Typer) -> None:  # noqa: C901 - one small closure per command
    @app.command("enhance")
    def enhance(
        inputs: list[str] = typer.Argument(None, help="Noisy audio files or globs."),
        output: Path = typer.Option(
            None, "-o", "--output", help="Output folder (default: next to each input, <stem>.enhanced.wav)."
        ),
        manifest: Path = _MANIFEST,
        chunk_seconds: float = _CHUNK,
        overlap_seconds: float = _OVERLAP,
        context_seconds: float = _CONTEXT,
        model: str = _MODEL,
        steps: int = _STEPS,
        cfg: float = _CFG,
        temperature: float = _TEMP,
        s2a_steps: str = _S2A_STEPS,
        s2a_temperature: float = _S2A_TEMP,
        seed: int = _SEED,
        device: str = _DEVICE,
        dtype: str = _DTYPE,
        batch_size: int = _BATCH,
        attention: str = _ATTN,
        fused_cfg: bool = _FUSED,
        low_memory: bool = _LOWMEM,
        checkpoint_dir: Path = _CKPT,
        offline: bool = _OFFLINE,
        overwrite: bool = _OVERWRITE,
        skip_existing: bool = _SKIP,
        json_out: bool = _JSON,
        quiet: bool = _QUIET,
    ) -> None:
        """Speech enhancement: denoise/dereverb each input (24 kHz wav out); any length."""
        kw = {k: v for k, v in locals().items() if k not in ("inputs", "output", "manifest")}
        _run_single_input("se", "enhanced", inputs, output, manifest, kw, ("input",))

    def pair_command(task: str, roles: tuple[str, str], helps: tuple[str, str], doc: str) -> None:
        """tse and vc: two positional files (main input first), one output."""

        def command(
            main: Path = typer.Argument(None, metavar=roles[0].upper(), help=helps[0]),
            other: Path = typer.Argument(None, metavar=roles[1].upper(), help=helps[1]),
            output: Path = typer.Option(
                None, "-o", "--output", help=f"Output wav (default <{roles[0]}>.{task}.wav)."
            ),
            manifest: Path = _MANIFEST,
            chunk_seconds: float = _CHUNK,
            overlap_seconds: float = _OVERLAP,
            model: str = _MODEL,
            steps: int = _STEPS,
            cfg: float = _CFG,
            temperature: float = _TEMP,
            s2a_steps: str = _S2A_STEPS,
            s2a_temperature: float = _S2A_TEMP,
            seed: int = _SEED,
            device: str = _DEVICE,
            dtype: str = _DTYPE,
            batch_size: int = _BATCH,
            attention: str = _ATTN,
            fused_cfg: bool = _FUSED,
            low_memory: bool = _LOWMEM,
            checkpoint_dir: Path = _CKPT,
            offline: bool = _OFFLINE,
            overwrite: bool = _OVERWRITE,
            skip_existing: bool = _SKIP,
            json_out: bool = _JSON,
            quiet: bool = _QUIET,
        ) -> None:
            kw = {k: v for k, v in locals().items() if k not in _NOT_OPTIONS}
            _run_pair(task, task, main, other, output, manifest, kw, roles)

        command.__doc__ = doc
        app.command(task)(command)

    pair_command(
        "tse",
        ("mix", "enrol"),
        ("Mixture of several speakers.", "Enrolment speech of the target speaker."),
        "Target speaker extraction: the voice of ENROL, extracted from MIX; any length.",
    )
    pair_command(
        "vc",
        ("source", "reference"),
        ("Speech to convert.", "Reference speech of the target voice."),
        "Voice conversion: SOURCE spoken in the voice of REFERENCE; any length.",
    )

    @app.command("tts")
    def tts(
        text: str = typer.Option(None, "--text", "-t", help="Text to speak."),
        text_file: Path = typer.Option(None, "--text-file", help="Read the text to speak from this file."),
        prompt: Path = typer.Option(None, "--prompt", "-p", help="Speaker prompt wav (3-30 s)."),
        prompt_text: str = typer.Option(None, "--prompt-text", help="Transcript of the prompt wav."),
        language: str = typer.Option(
            "auto", "--language", "-l", help="auto, en, zh, ja, ko, fr or de (target text)."
        ),
        prompt_language: str = typer.Option(
            "auto", "--prompt-language", help="Language of the prompt transcript."
        ),
        duration: float = typer.Option(
            None, "--duration", help="Target duration in seconds (default: length rule)."
        ),
        output: Path = typer.Option(Path("tts.wav"), "-o", "--output", help="Output wav."),
        manifest: Path = _MANIFEST,
        max_chars: int = _MAX_CHARS,
        model: str = _MODEL,
        steps: int = _STEPS,
        cfg: float = _CFG,
        temperature: float = _TEMP,
        s2a_steps: str = _S2A_STEPS,
        s2a_temperature: float = _S2A_TEMP,
        seed: int = _SEED,
        device: str = _DEVICE,
        dtype: str = _DTYPE,
        batch_size: int = _BATCH,
        attention: str = _ATTN,
        fused_cfg: bool = _FUSED,
        low_memory: bool = _LOWMEM,
        checkpoint_dir: Path = _CKPT,
        offline: bool = _OFFLINE,
        overwrite: bool = _OVERWRITE,
        skip_existing: bool = _SKIP,
        json_out: bool = _JSON,
        quiet: bool = _QUIET,
    ) -> None:
        """Zero-shot text-to-speech in the voice of a prompt (MaskGCT T2S, or --model metis-omni)."""
        local = dict(locals())
        kw = {
            k: local[k]
            for k in local
            if k
            not in (
                "text",
                "text_file",
                "prompt",
                "prompt_text",
                "language",
                "prompt_language",
                "duration",
                "output",
                "manifest",
            )
        }
        langs = ("auto", "en", "zh", "ja", "ko", "fr", "de")
        for name, val in (("--language", language), ("--prompt-language", prompt_language)):
            if val not in langs:
                raise typer.BadParameter(f"{name} must be one of {', '.join(langs)} (got {val!r})")
        if manifest is None:
            if text_file is not None:
                if text is not None:
                    raise typer.BadParameter("give --text or --text-file, not both")
                try:
                    text = text_file.read_text(encoding="utf-8").strip()
                except (OSError, UnicodeDecodeError) as exc:
                    _err(f"{text_file}: cannot read text ({exc})")
                    raise typer.Exit(2) from None
            if text is None or prompt is None or prompt_text is None:
                raise typer.BadParameter("tts needs --text (or --text-file), --prompt and --prompt-text")

        def jobs(pipe: Any) -> list:
            return [
                pipe.make_job(
                    [prompt], output, local["seed"], text, prompt_text, language, prompt_language, duration
                )
            ]

        def from_row(pipe: Any, row: dict) -> Any:
            return _job_from_row(pipe, row, ("prompt",), "tts", None, language=language)

        Runner("tts", **_runner_kw(kw)).run(jobs, manifest, from_row)

    @app.command("l2s")
    def l2s(
        videos: list[str] = typer.Argument(None, help="Silent videos of a speaking face (25 fps ideal)."),
        prompt: Path = typer.Option(None, "--prompt", "-p", help="Optional speaker prompt wav."),
        landmarks: Path = typer.Option(
            None,
            "--landmarks",
            help="Face keypoints .npy (frames, 4, 2): right eye, left eye, nose tip, mouth centre in pixels, "
            "NaN rows for frames without a face (instead of the MediaPipe detector; one video).",
        ),
        visual_checkpoint: Path = typer.Option(
            None,
            "--visual-checkpoint",
            envvar="METIS_VISUAL_CHECKPOINT",
            help="Auto-AVSR visual-only model.pth (LRS3_V_WER19.1; model.json beside it). Not shipped: see "
            "`metis models`.",
        ),
        output: Path = typer.Option(
            None, "-o", "--output", help="Output folder or wav (default <video>.l2s.wav)."
        ),
        manifest: Path = _MANIFEST,
        model: str = _MODEL,
        steps: int = _STEPS,
        cfg: float = _CFG,
        temperature: float = _TEMP,
        s2a_steps: str = _S2A_STEPS,
        s2a_temperature: float = _S2A_TEMP,
        seed: int = _SEED,
        device: str = _DEVICE,
        dtype: str = _DTYPE,
        batch_size: int = _BATCH,
        attention: str = _ATTN,
        fused_cfg: bool = _FUSED,
        low_memory: bool = _LOWMEM,
        checkpoint_dir: Path = _CKPT,
        offline: bool = _OFFLINE,
        overwrite: bool = _OVERWRITE,
        skip_existing: bool = _SKIP,
        json_out: bool = _JSON,
        quiet: bool = _QUIET,
    ) -> None:
        """Lip-to-speech: speech for silent lip video, optionally in the voice of a prompt."""
        kw = {
            k: v
            for k, v in locals().items()
            if k not in ("videos", "prompt", "landmarks", "output", "manifest")
        }
        extra = {"prompt": prompt, "landmarks": landmarks}
        _run_single_input("l2s", "l2s", videos, output, manifest, kw, ("video", "prompt", "landmarks"), extra)


def _runner_kw(kw: dict[str, Any]) -> dict[str, Any]:
    kw = dict(kw)
    kw.pop("seed", None)
    return kw


def _job_from_row(
    pipe: Any, row: dict, roles: tuple[str, ...], suffix: str, outdir: Path | None, language: str = "auto"
) -> Any:
    from ..tasks import TASKS

    missing = [r for r in TASKS[pipe.task].inputs if not row.get(r)]
    if missing:
        raise InputError(f"manifest job {row}: missing field(s) {', '.join(missing)}")
    inputs = {r: row[r] for r in roles if row.get(r)}
    main = Path(inputs[TASKS[pipe.task].inputs[0]])
    out = Path(row["output"]) if row.get("output") else _default_output(main, outdir, suffix, True)
    seed = row.get("seed")
    dur = row.get("duration")
    return pipe.make_job(
        inputs,
        out,
        int(seed) if seed not in (None, "") else None,
        row.get("text"),
        row.get("prompt_text"),
        row.get("language") or language,
        row.get("prompt_language") or "auto",
        float(dur) if dur not in (None, "") else None,
    )


def _run_single_input(
    task: str,
    suffix: str,
    inputs: list[str] | None,
    output: Path | None,
    manifest: Path | None,
    kw: dict[str, Any],
    roles: tuple[str, ...],
    extra_inputs: list[Path] | None = None,
) -> None:
    seed = kw.get("seed")
    if manifest is None and not inputs:
        raise typer.BadParameter("give input files (or --manifest)")
    if manifest is not None and inputs:
        raise typer.BadParameter("give input files or --manifest, not both")

    def jobs(pipe: Any) -> list:
        files = _expand(inputs or [])
        many = len(files) > 1
        _outdir_check(output, many)
        if many and (extra_inputs or {}).get("landmarks") is not None:
            raise InputError(
                "--landmarks describes one video; use a --manifest with a landmarks field per video"
            )
        return [
            pipe.make_job(
                {roles[0]: f, **(extra_inputs or {})}, _default_output(f, output, suffix, many), seed
            )
            for f in files
        ]

    def from_row(pipe: Any, row: dict) -> Any:
        return _job_from_row(pipe, row, roles, suffix, output)

    Runner(task, **_runner_kw(kw)).run(jobs, manifest, from_row)


def _run_pair(
    task: str,
    suffix: str,
    main: Path | None,
    other: Path | None,
    output: Path | None,
    manifest: Path | None,
    kw: dict[str, Any],
    roles: tuple[str, ...],
) -> None:
    seed = kw.get("seed")
    if manifest is None and (main is None or other is None):
        raise typer.BadParameter(
            f"{task} needs two files: {' and '.join(r.upper() for r in roles)} (or --manifest)"
        )

    def jobs(pipe: Any) -> list:
        _outdir_check(output, False)
        return [pipe.make_job([main, other], _default_output(main, output, suffix, False), seed)]

    def from_row(pipe: Any, row: dict) -> Any:
        return _job_from_row(pipe, row, roles, suffix, output)

    Runner(task, **_runner_kw(kw)).run(jobs, manifest, from_row)

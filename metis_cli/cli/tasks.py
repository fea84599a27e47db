"""Task commands: enhance, tse, vc, tts, l2s. Each maps its arguments to a `jobs.Request`; the
shared options come from `metis_cli.options`; planning is `metis_cli.jobs`; this module parses
and prints.

stdout carries results only (an output path per job, or a JSON object per job with --json);
progress, warnings and the summary go to stderr. Exit codes: docs/CLI.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from metis_cli import options
from metis_cli.cli.params import command, group_params, param
from metis_cli.cli.report import Printer, error_line, fail_usage, run_guarded, text_from
from metis_cli.errors import InputError, MetisError, UsageError

OUTPUT_HELP = {
    "se": "Output file (one input) or folder (default: next to each input, <stem>.enhanced.wav); "
    "'-' writes the WAV to stdout.",
    "tse": "Output file or folder (default <mix>.tse.wav); '-' writes the WAV to stdout.",
    "vc": "Output file or folder (default <source>.vc.wav); '-' writes the WAV to stdout.",
    "tts": "Output file or folder (default tts.wav); '-' writes the WAV to stdout.",
    "l2s": "Output file or folder (default <video>.l2s.wav); '-' writes the WAV to stdout.",
}
MANIFEST_HELP = "Jobs file (.jsonl or .csv), one job per line: input roles, output, seed (docs/CLI.md)."


def _common(task: str) -> list:
    return [
        param("output", Path | None, typer.Option(None, "-o", "--output", help=OUTPUT_HELP[task])),
        param("manifest", Path | None, typer.Option(None, "--manifest", help=MANIFEST_HELP)),
        *group_params(options.COMMAND_GROUPS, task),
    ]


def _run(
    task: str, values: dict[str, Any], inputs: tuple = (), fixed: dict | None = None, **tts: Any
) -> None:
    """Validate options, plan, load, run, print (every front-end step through the job layer)."""
    groups = options.split({k: v for k, v in values.items() if k in _OPTION_NAMES})
    policy: options.OutputPolicy = groups[options.OutputPolicy]
    report: options.ReportOptions = groups[options.ReportOptions]
    request_kw = {
        "task": task,
        "inputs": tuple(inputs),
        "fixed_inputs": {k: v for k, v in (fixed or {}).items() if v is not None},
        "manifest": values.get("manifest"),
        "output": values.get("output"),
        "seed": groups[options.JobDefaults].seed,
        "existing": policy.existing,
        **tts,
    }
    _read_pipes(task, values.get("output"), request_kw["inputs"], request_kw["fixed_inputs"])
    printer = Printer(task, as_json=report.json, quiet=report.quiet)
    run_guarded(printer, groups, request_kw)


def _read_pipes(task: str, output: Any, inputs: tuple, fixed: dict[str, Any]) -> None:
    """Audio inputs from pipes ("-" for stdin, a FIFO, /dev/stdin, /dev/fd/N) are read into
    memory before anything else, as ffmpeg and sox do (`media.audio.read_stream`)."""
    from metis_cli.media.audio import is_stream, read_stream

    audio = [] if task == "l2s" else list(inputs)  # l2s: videos are files; its prompt is audio
    audio += [v for role, v in fixed.items() if role != "landmarks"]
    names = [str(a) for a in audio]
    if names.count("-") > 1:
        fail_usage("-: standard input can be read only once; give '-' for one input")
    main = names[0] if names else None
    if task in ("se", "tse", "vc") and main == "-" and output is None:
        fail_usage("audio from standard input (-): give -o FILE (or -o - for stdout)")
    for arg in audio:
        if is_stream(arg):
            try:
                read_stream(arg)
            except MetisError as exc:
                error_line(str(exc))
                raise typer.Exit(1) from None


_OPTION_NAMES = {n for g in options.COMMAND_GROUPS for n in options.names(g)}


def _enhance(values: dict[str, Any]) -> None:
    if values["manifest"] is None and not values["inputs"]:
        fail_usage("give input files or folders (or --manifest)")
    if values["manifest"] is not None and values["inputs"]:
        fail_usage("give input files or --manifest, not both")
    _run("se", values, tuple(values["inputs"] or ()))


def _pair(task: str, roles: tuple[str, str]):
    def body(values: dict[str, Any]) -> None:
        a, b = values[roles[0]], values[roles[1]]
        if values["manifest"] is None and (a is None or b is None):
            fail_usage(f"{task} needs two files: {' and '.join(r.upper() for r in roles)} (or --manifest)")
        if values["manifest"] is not None and (a is not None or b is not None):
            fail_usage(f"give {' and '.join(r.upper() for r in roles)} or --manifest, not both")
        fixed = {} if values["manifest"] is not None else {roles[0]: a, roles[1]: b}
        _run(task, values, fixed=fixed)

    return body


def _tts(values: dict[str, Any]) -> None:
    text, text_file = values["text"], values["text_file"]
    for flag, key in (("--language", "language"), ("--prompt-language", "prompt_language")):
        options.one_of(options.LANGUAGE_CHOICES)(flag, values[key])  # UsageError → exit 2 (run_guarded)
    options.duration("--duration", values["duration"])
    if values["manifest"] is None:
        if text_file is not None:
            if text is not None:
                fail_usage("give --text or --text-file, not both")
            text = text_from(text_file)
        elif text == "-":
            text = text_from(Path("-"))
        if str(values["prompt"]) == "-" and (values["text"] == "-" or str(text_file) == "-"):
            fail_usage("-: standard input can be read only once (text or prompt, not both)")
        if text is None or values["prompt"] is None or values["prompt_text"] is None:
            fail_usage("tts needs --text (or --text-file), --prompt and --prompt-text")
    elif text is not None or text_file is not None or values["prompt"] is not None:
        fail_usage("with --manifest, give text, prompt and prompt_text per row, not as options")
    _run(
        "tts",
        values,
        fixed={"prompt": values["prompt"]},
        text=text,
        prompt_text=values["prompt_text"],
        language=values["language"],
        prompt_language=values["prompt_language"],
        duration=values["duration"],
    )


def _l2s(values: dict[str, Any]) -> None:
    if values["manifest"] is None and not values["videos"]:
        fail_usage("give video files (or --manifest)")
    if values["manifest"] is not None and values["videos"]:
        fail_usage("give video files or --manifest, not both")
    if values["landmarks"] is not None and len(values["videos"] or ()) > 1:
        fail_usage("--landmarks describes one video; use a --manifest with a landmarks field per video")
    fixed = {"prompt": values["prompt"], "landmarks": values["landmarks"]}
    _run("l2s", values, tuple(values["videos"] or ()), fixed=fixed)


_PAIRS = (
    (
        "tse",
        ("mix", "enrol"),
        ("Mixture of several speakers.", "Enrolment speech of the target speaker."),
        "Target speaker extraction: the voice of ENROL, extracted from MIX; any length.",
    ),
    (
        "vc",
        ("source", "reference"),
        ("Speech to convert.", "Reference speech of the target voice."),
        "Voice conversion: SOURCE spoken in the voice of REFERENCE; any length.",
    ),
)


def _enhance_params() -> list:
    return [
        param(
            "inputs",
            list[str] | None,
            typer.Argument(None, help="Noisy audio files, folders (their audio files) or globs."),
        ),
        *_common("se"),
    ]


def _pair_params(task: str, roles: tuple[str, str], helps: tuple[str, str]) -> list:
    return [
        param(roles[0], Path | None, typer.Argument(None, metavar=roles[0].upper(), help=helps[0])),
        param(roles[1], Path | None, typer.Argument(None, metavar=roles[1].upper(), help=helps[1])),
        *_common(task),
    ]


def _tts_params() -> list:
    return [
        param(
            "text", str | None, typer.Option(None, "--text", "-t", help="Text to speak ('-': read stdin).")
        ),
        param(
            "text_file",
            Path | None,
            typer.Option(None, "--text-file", help="Read the text to speak from this file ('-': stdin)."),
        ),
        param(
            "prompt",
            Path | None,
            typer.Option(None, "--prompt", "-p", help="Speaker prompt audio (3-30 s)."),
        ),
        param(
            "prompt_text",
            str | None,
            typer.Option(None, "--prompt-text", help="Transcript of the prompt."),
        ),
        param(
            "language",
            str,
            typer.Option("auto", "--language", "-l", help="auto, en, zh, ja, ko, fr or de (target text)."),
        ),
        param(
            "prompt_language",
            str,
            typer.Option("auto", "--prompt-language", help="Language of the prompt transcript."),
        ),
        param(
            "duration",
            float | None,
            typer.Option(
                None,
                "--duration",
                help=f"Target duration in seconds (more than 0, at most {options.MAX_DURATION_SECONDS:g}; "
                "default: length rule).",
            ),
        ),
        *_common("tts"),
    ]


def _l2s_params() -> list:
    return [
        param(
            "videos",
            list[str] | None,
            typer.Argument(None, help="Silent videos of a speaking face (25 fps ideal), folders or globs."),
        ),
        param(
            "prompt",
            Path | None,
            typer.Option(None, "--prompt", "-p", help="Optional speaker prompt audio."),
        ),
        param(
            "landmarks",
            Path | None,
            typer.Option(
                None,
                "--landmarks",
                help="Face keypoints .npy (frames, 4, 2): right eye, left eye, nose tip, mouth centre in "
                "pixels, NaN rows for frames without a face (instead of the MediaPipe detector; one video).",
            ),
        ),
        *_common("l2s"),
    ]


def register(app: typer.Typer) -> None:
    enhance = _enhance_params()
    app.command(options.command_of("se"))(
        command(
            _enhance, enhance, "Speech enhancement: denoise/dereverb each input (24 kHz out); any length."
        )
    )
    for task, roles, helps, doc in _PAIRS:
        app.command(task)(command(_pair(task, roles), _pair_params(task, roles, helps), doc))
    tts = _tts_params()
    app.command("tts")(
        command(
            _tts,
            tts,
            "Zero-shot text-to-speech in the voice of a prompt (MaskGCT T2S, or --model metis-omni).",
        )
    )
    l2s = _l2s_params()
    app.command("l2s")(
        command(_l2s, l2s, "Lip-to-speech: speech for silent lip video, optionally in the voice of a prompt.")
    )


__all__ = ["register", "InputError", "MetisError", "UsageError", "json", "sys"]

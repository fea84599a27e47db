"""``metis g2p``: text → official phones and phone ids; a batch filter over stdin lines."""

from __future__ import annotations

import json
import sys

import typer

from metis_cli.errors import MetisError, TextError


def _convert(text: str, language: str | None) -> dict:
    from metis_cli import text as front

    front.check_utf8(text)
    text = front.clean_text(text)
    if not text.strip():
        raise TextError("empty text")
    if not front.has_speech(text):
        raise TextError(f"text {text[:40]!r} has no letters or digits to phonemise")
    lang = language or front.detect_language(text)
    phones, ids = front.speech_g2p(text, lang)
    return {"text": text, "lang": lang, "phones": phones, "ids": ids}


def g2p_command(
    text: str | None = typer.Argument(None, help="Text to convert; omitted: one text per stdin line."),
    language: str | None = typer.Option(
        None, "--language", "-l", help="zh, en, ja, fr, ko, de or auto (default: detected per text)."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Report the espeak-ng stack on stderr."),
) -> None:
    """Print the phone string and phone ids of each text."""
    from metis_cli.cli.report import fail_usage
    from metis_cli.text import LANGUAGES

    if language == "auto":
        language = None
    if language is not None and language not in LANGUAGES:
        fail_usage(f"--language: must be one of {', '.join(LANGUAGES)} or auto (got {language!r})")
    if verbose:
        from metis_cli.text import espeak_info

        try:
            info = espeak_info()
            typer.echo(
                f"espeak-ng {info['espeak_ng']} ({info['backend']}: {info['library']}), "
                f"phonemizer {info['phonemizer']}",
                err=True,
            )
        except MetisError as exc:
            typer.echo(f"espeak-ng: {exc}", err=True)
    lines = [text] if text is not None and text != "-" else _stdin_lines()
    failed = 0
    try:
        for number, line in enumerate(lines, start=1):
            try:
                result = _convert(line, language)
            except Exception as exc:  # one bad line (or a front-end bug) never stops the others
                failed += 1
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if not isinstance(exc, MetisError):
                    message = f"{type(exc).__name__}: {message}"
                if as_json:
                    _out(json.dumps({"text": line, "lang": language, "error": message}, ensure_ascii=False))
                typer.echo(f"line {number}: {message}", err=True)
                continue
            if as_json:
                _out(json.dumps(result, ensure_ascii=False))
            else:
                _out(f"{result['lang']}\t{result['phones']}\t{' '.join(map(str, result['ids']))}")
    except BrokenPipeError:  # the reader closed stdout (`| head -1`): stop quietly, like SIGPIPE
        from metis_cli.cli.report import EXIT_SIGPIPE, silence_stdout

        silence_stdout()
        raise typer.Exit(EXIT_SIGPIPE) from None
    if failed:
        raise typer.Exit(1)


def _stdin_lines():
    """stdin's lines, decoded as UTF-8 one by one: a line that is not UTF-8 becomes a string
    with its bad bytes as lone surrogates, which `_convert` reports (naming the byte)."""
    for raw in sys.stdin.buffer:
        yield raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    """Add the ``g2p`` command to the ``metis`` app."""
    app.command("g2p")(g2p_command)

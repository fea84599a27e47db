"""The `metis` command: parses arguments, calls the API, prints results (stdout) and
progress/errors (stderr). It never touches tensors.

Exit codes: 0 every job succeeded (or was skipped); 1 some jobs failed (the others still
ran and were written); 2 usage errors.
"""

from __future__ import annotations

import logging
import sys

import typer

from .. import __version__

app = typer.Typer(
    name="metis",
    help=(
        "Metis speech generation from the official checkpoints: TTS, voice conversion, target speaker "
        "extraction, speech enhancement and lip-to-speech.\n\n"
        "Exit codes: 0 all jobs succeeded, 1 some jobs failed (the rest were written), 2 usage error."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"metis {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging on stderr."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _register() -> None:
    from . import g2p, models, tasks, train

    tasks.register(app)
    models.register(app)
    g2p.register(app)
    train.register(app)


_register()


def main() -> None:
    """Console-script entry point."""
    app()

"""The `metis` command: parses arguments, calls the job layer and the API, prints results
(stdout) and progress/errors (stderr). It never touches tensors.

Exit codes (docs/CLI.md): 0 every job succeeded (or was skipped); 1 some jobs failed (the others
still ran and were written); 2 usage errors (one line `metis: error: ...`); 130 SIGINT;
141 stdout closed by its reader; 143 SIGTERM, 129 SIGHUP, 131 SIGQUIT.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from metis_cli import __version__

# Typer's click exceptions (recent Typer releases vendor click: take the classes from Typer itself)
_EXC = sys.modules[typer.BadParameter.__module__]
_NO_ARGS = getattr(_EXC, "NoArgsIsHelpError", None) or type("_Never", (Exception,), {})


class MetisGroup(TyperGroup):
    """Usage errors as one line `metis: error: ...` with exit code 2, for every command."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except _NO_ARGS as exc:
            typer.echo(exc.ctx.get_help(), err=True)
            sys.exit(2)
        except _EXC.UsageError as exc:
            sys.stderr.write(f"metis: error: {_usage_message(exc)}\n")
            sys.exit(2)
        except _EXC.ClickException as exc:
            sys.stderr.write(f"metis: error: {exc.format_message()}\n")
            sys.exit(exc.exit_code)
        except typer.Abort:
            sys.stderr.write("metis: error: interrupted\n")
            sys.exit(130)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def _usage_message(exc: Exception) -> str:
    if isinstance(exc, typer.BadParameter) and exc.param is not None:
        names = "/".join(getattr(exc.param, "opts", []) or [exc.param.name or "?"])
        return f"{names}: {exc.message}"
    return exc.format_message().replace("\n", " ")


app = typer.Typer(
    name="metis",
    cls=MetisGroup,
    help=(
        "Metis speech generation from the official checkpoints: TTS, voice conversion, target speaker "
        "extraction, speech enhancement and lip-to-speech.\n\n"
        "Exit codes: 0 all jobs succeeded, 1 some jobs failed (the rest were written), 2 usage error, "
        "128+N ended by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), 141 stdout closed."
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
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Debug logging on stderr (tracebacks of failed jobs)."
    ),
) -> None:
    from metis_cli.cli.logs import configure

    configure(verbose=verbose)


def _register() -> None:
    from metis_cli.cli import g2p, models, serve, tasks, train

    tasks.register(app)
    models.register(app)
    g2p.register(app)
    train.register(app)
    from metis_cli.cli import ray_cmd, results  # sharded runs: metis results, metis ray

    results.register(app)
    ray_cmd.register(app)
    serve.register(app)


_register()


def main() -> None:
    """Console-script entry point (also `metis_cli.__main__.main`, which sets the signal handlers
    before this package is imported)."""
    from metis_cli.__main__ import guarded

    guarded(lambda: app(prog_name="metis"))

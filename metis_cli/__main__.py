"""The `metis` console script and `python -m metis_cli`: signal handling first, then the CLI.

Nothing heavy is imported before the handlers are in place, so a signal in the first second
(while Python imports the CLI or a model loads) ends the process like one later on: SIGTERM,
SIGHUP (a closed terminal or ssh session) and SIGQUIT exit with 128 + the signal number, SIGINT
(Ctrl-C) with 130 and one line `metis: error: interrupted`, never a traceback. The task
commands then clean up their temporary files on the way out (`cli.report.signals`).
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Callable
from typing import Any

# signals that end a run like SIGTERM (SIGINT is Python's KeyboardInterrupt)
ENDING_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def guarded(run: Callable[[], Any]) -> None:
    """Call `run()` with the ending signals turned into SystemExit(128 + signum) and Ctrl-C
    into exit status 130 with one line on stderr."""
    for sig in ENDING_SIGNALS:
        signal.signal(sig, _exit_on_signal)
    try:
        run()
    except KeyboardInterrupt:
        sys.stderr.write("\nmetis: error: interrupted\n")
        sys.stderr.flush()
        sys.exit(130)


def main() -> None:
    """Console-script entry point (the CLI is imported only after the handlers are set)."""
    guarded(lambda: importlib.import_module("metis_cli.cli").app(prog_name="metis"))


if __name__ == "__main__":
    main()

"""Running a planned request from the CLI and printing what happens.

stdout: results only (an output path per finished job, or one JSON object per job with
--json), never drawn by the progress display. stderr: the progress bar (on a terminal, not with
--quiet), warnings, a line per failed or skipped job and the summary (not with --quiet, which
keeps errors only). Paths are printed literally (no markup); bytes of a name that are not UTF-8
and control characters are printed as \\xNN (`errors.printable`, as `ls -b` does). With `-o -`
stdout carries the audio, so the --json line goes to stderr.

Exit codes: 0 all jobs ok or skipped; 1 some jobs failed (or the models could not be loaded);
2 usage error; 130 SIGINT; 143 SIGTERM (129 SIGHUP, 131 SIGQUIT); 141 stdout closed by the reader
(the run stops quietly; finished outputs stay complete, nothing partial is left).
"""

from __future__ import annotations

import json
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer

from metis_cli import jobs, options
from metis_cli.errors import InputError, MetisError, UsageError, printable

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGPIPE, EXIT_SIGINT, EXIT_SIGTERM = 141, 130, 143


def error_line(msg: str) -> None:
    sys.stderr.write(f"metis: error: {printable(msg)}\n")
    sys.stderr.flush()


def fail_usage(msg: str) -> NoReturn:
    error_line(msg)
    raise typer.Exit(EXIT_USAGE)


def text_from(path: Path) -> str:
    """The text of a file, or of stdin for '-' (usage error if unreadable or not UTF-8, naming
    the line and byte)."""
    name = "stdin" if str(path) == "-" else str(path)
    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        fail_usage(f"{name}: cannot read text ({exc.strerror or exc})")
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        fail_usage(
            f"{name}: line {line}: not UTF-8 (byte 0x{raw[exc.start]:02x} at byte {column} of the line)"
        )


class Terminated(SystemExit):
    """SIGTERM, SIGHUP or SIGQUIT (code 128 + signal), raised where the main thread is, so every
    writer cleans up on its way out."""


ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


@contextmanager
def signals() -> Any:
    """SIGTERM, SIGHUP and SIGQUIT raise `Terminated(128 + signal)` inside the block."""

    def on_term(signum: int, frame: Any) -> None:
        raise Terminated(128 + signum)

    old = {sig: signal.signal(sig, on_term) for sig in ENDING_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class StdoutClosed(Exception):
    pass


class Printer:
    """Results on stdout, messages and progress on stderr."""

    def __init__(self, task: str, as_json: bool, quiet: bool) -> None:
        from rich.console import Console

        self.task, self.as_json, self.quiet = task, as_json, quiet
        self.console = Console(stderr=True, soft_wrap=True, markup=False, highlight=False, emoji=False)

    def result(self, line: str) -> None:
        try:
            sys.stdout.write(printable(line) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            raise StdoutClosed from None

    def report(self, line: str) -> None:
        """A --json line when stdout carries the audio (`-o -`): on stderr, even with --quiet."""
        self.console.print(printable(line), markup=False, highlight=False, soft_wrap=True)

    def message(self, text: str) -> None:
        """Progress-level messages (ok/skipped lines, warnings, the summary): not with --quiet."""
        if not self.quiet:
            self.console.print(printable(text), markup=False, highlight=False)

    def error(self, text: str) -> None:
        """A failed job's line: shown even with --quiet."""
        self.console.print(printable(text), markup=False, highlight=False)

    def progress(self, total: int) -> Any:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        return Progress(
            TextColumn(f"metis {self.task}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=self.quiet or not self.console.is_terminal,
            redirect_stdout=False,  # stdout carries results: never captured by the live display
            redirect_stderr=False,
            transient=False,
        )


def configure_quiet(quiet: bool) -> None:
    """stderr policy for a run: our logging, and huggingface_hub's warnings and progress bars.
    (--offline is the model store's business: it never calls the hub when offline.)"""
    from metis_cli.assets.cards import quiet_hub
    from metis_cli.cli.logs import configure

    configure(quiet)
    quiet_hub(quiet)
    if not sys.stderr.isatty():  # no download progress bars when piped
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def run_guarded(printer: Printer, groups: dict[type, Any], request_kw: dict[str, Any]) -> None:
    """Load (lazily), plan, run and print; turns every outcome into its exit code."""
    from metis_cli.cli.logs import restore_levels, saved_levels

    levels = saved_levels()
    code = EXIT_OK
    try:
        _check_usage(groups)  # before anything heavy is imported (no torch for a usage error)
        configure_quiet(printer.quiet)
        with signals(), _quiet_warnings(printer.quiet):
            code = _run(printer, groups, request_kw)
    except UsageError as exc:
        error_line(str(exc))
        code = EXIT_USAGE
    except StdoutClosed:
        silence_stdout()
        code = EXIT_SIGPIPE
    except KeyboardInterrupt:
        error_line("interrupted")
        code = EXIT_SIGINT
    except Terminated as exc:
        code = int(exc.code) if isinstance(exc.code, int) else EXIT_SIGTERM
    finally:
        from metis_cli.media.audio import remove_temp_files

        remove_temp_files()
        restore_levels(levels)
    raise typer.Exit(code)


@contextmanager
def _quiet_warnings(quiet: bool) -> Any:
    """--quiet: Python warnings from libraries are not shown (restored afterwards)."""
    import warnings

    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        yield


def silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _run(printer: Printer, groups: dict[type, Any], request_kw: dict[str, Any]) -> int:
    from metis_cli.api import load
    from metis_cli.runs.session import Session  # sharded runs: shard, resume, buckets, ledger
    from metis_cli.runs.shard import local_device

    task = request_kw["task"]
    server = getattr(groups.get(options.ReportOptions), "server", None)
    if server:  # client mode: the jobs run on a running `metis serve` (metis_cli/serve/client.py)
        from metis_cli.serve.client import RemotePipeline

        plan = jobs.plan(jobs.Request(**request_kw))
        for w in plan.warnings:
            printer.message(f"warning: {w}")
        dec = {k: getattr(groups[options.DecodingOptions], k) for k in options.names(options.DecodingOptions)}
        dec = {k: v for k, v in dec.items() if v is not None}
        try:
            remote = RemotePipeline.connect(server, task, dec)
        except MetisError as exc:
            error_line(str(exc))
            return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILED
        with remote:  # the same run contract: shard, resume, ledger (written here, by the client)
            args = {**_session_args(plan.task, groups), "batch_size": 1}
            settings = {"mode": "client", "decoding": dec}  # not the URL: a moved service is the same
            return _in_session(
                printer, remote, Session.open(plan, message=printer.message, settings=settings, **args)
            )
    m: options.ModelOptions = groups[options.ModelOptions]
    load_kw = {
        **{k: getattr(m, k) for k in options.names(options.ModelOptions)},
        **{k: getattr(groups[options.EngineOptions], k) for k in options.names(options.EngineOptions)},
        **{k: getattr(groups[options.LongformOptions], k) for k in options.names(options.LongformOptions)},
        **{k: getattr(groups[options.DecodingOptions], k) for k in options.names(options.DecodingOptions)},
    }
    load_kw["offline"] = load_kw["offline"] or None  # None: honour HF_HUB_OFFLINE
    load_kw["device"] = local_device(load_kw["device"])
    try:
        pipe = load(task, wording="cli", **load_kw)  # lazy: reads cards, resolves the device; no weights yet
    except MetisError as exc:
        error_line(str(exc))
        return EXIT_USAGE if isinstance(exc, InputError) else EXIT_FAILED
    import torch

    threads = torch.get_num_threads()
    plan = jobs.plan(jobs.Request(**request_kw))
    for w in plan.warnings:
        printer.message(f"warning: {w}")
    settings = settings_of(pipe, groups)
    session = Session.open(
        plan, message=printer.message, settings=settings, threads=threads, **_session_args(plan.task, groups)
    )
    return _in_session(printer, pipe, session, {"threads": threads})


def _check_usage(groups: dict[type, Any]) -> None:
    """The run-control usage errors that need no model (raises UsageError)."""
    from metis_cli.runs.session import check_run_control

    ctl = groups.get(options.RunControl) or options.RunControl()
    check_run_control(ctl.results, ctl.resume, ctl.retry_failed)


def _session_args(task: str, groups: dict[type, Any]) -> dict[str, Any]:
    """`Session.open` arguments from the run-control, engine and long-form option groups."""
    from metis_cli.runs.shard import resolve_shard

    ctl = groups.get(options.RunControl) or options.RunControl()
    lf = groups.get(options.LongformOptions)
    return dict(
        shard=resolve_shard(ctl.shard),
        results=ctl.results,
        resume_run=ctl.resume,
        retry_failed=ctl.retry_failed,
        batch_size=groups[options.EngineOptions].batch_size if options.EngineOptions in groups else 1,
        length_buckets=ctl.length_buckets,
        long_seconds=lf.chunk_seconds if lf is not None and task in ("se", "tse", "vc") else 0.0,
    )


def json_line(obj: Any) -> str:
    """One JSON line; strings as `printable` shows them (names that are not UTF-8 as \\xNN)."""

    def clean(v: Any) -> Any:
        if isinstance(v, str):
            return printable(v, controls=False)  # json.dumps escapes control characters itself
        if isinstance(v, dict):
            return {clean(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), ensure_ascii=False, default=str)


def settings_of(pipe: Any, groups: dict[type, Any]) -> dict[str, Any]:
    """What a job's output depends on besides the job itself: recorded with each success, and
    a resume reruns the jobs recorded with other settings (`runs.ledger.job_identity`)."""
    import dataclasses

    eng: options.EngineOptions = groups[options.EngineOptions]
    m: options.ModelOptions = groups[options.ModelOptions]
    return {
        "model": m.model,
        "dtype": eng.dtype,
        "attention": eng.attention,
        "decoding": dataclasses.asdict(pipe.decoding()),
        "longform": dataclasses.asdict(groups[options.LongformOptions])
        if options.LongformOptions in groups
        else None,
    }


def _in_session(printer: Printer, pipe: Any, session: Any, extra: dict[str, Any] | None = None) -> int:
    """Run a session's plan, each report recorded in its ledger; the ledger's lock is released
    however the run ends."""
    try:
        return session.finish(execute(printer, pipe, session.plan, session.record, session.started, extra))
    finally:
        session.close()


def execute(
    printer: Printer,
    pipe: Any,
    plan: jobs.Plan,
    on_report: Any = None,
    on_start: Any = None,
    extra: dict[str, Any] | None = None,
) -> int:
    """Run a plan through `pipe` (a `Pipeline` or `RemotePipeline`) and print each report;
    `extra`: fields added to each --json record (e.g. the torch threads of this process)."""
    failures: list[Any] = []
    run_kw = {} if on_start is None else {"on_start": on_start}
    done = 0
    total = len(plan)
    with printer.progress(total) as progress:
        bar = progress.add_task(printer.task, total=total)
        chunk_bar: list[Any] = []

        def on_chunk(p: Any) -> None:  # longform.ChunkProgress after each chunk of a long input
            if not chunk_bar:
                chunk_bar.append(progress.add_task(f"  {Path(p.output).name}", total=p.total))
            progress.update(chunk_bar[0], completed=p.index + 1, total=p.total)

        try:
            for rep in pipe.run(plan, on_chunk=on_chunk, on_report=on_report, **run_kw):
                done += 1
                progress.advance(bar)
                if chunk_bar:
                    progress.remove_task(chunk_bar.pop())
                for w in rep.info.get("warnings", ()):
                    printer.message(f"warning: {w}")
                record = {**rep.to_dict(), **(extra or {})}
                if printer.as_json and rep.output == "-":
                    printer.report(json_line(record))
                elif printer.as_json:
                    printer.result(json_line(record))
                elif rep.status == "ok" and rep.output != "-":
                    printer.result(rep.output)
                if rep.status == "error":
                    failures.append(rep)
                    printer.error(f"failed: {rep.error}")
                elif rep.status == "skipped":
                    printer.message(f"skipped: {rep.output} (exists)")
                elif not printer.as_json:
                    printer.message(f"ok: {rep.output} (seed {rep.seed})")
        except MetisError as exc:  # a model could not be loaded: nothing more can run
            error_line(str(exc))
            return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILED
    if failures:
        printer.message(f"{len(failures)} of {total} job(s) failed:")
        for rep in failures:
            printer.message(f"  {rep.error}")
        return EXIT_FAILED
    return EXIT_OK

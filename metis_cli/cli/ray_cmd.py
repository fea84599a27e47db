"""`metis ray TASK --manifest jobs.jsonl --workers N`: a manifest over a Ray cluster (Ray Data).

This module parses and prints; the driver is `metis_cli.runs.ray.drive`. Plans on the driver
exactly like the task commands (`jobs.plan`), resumes from and appends to the same results ledger
(`--results`, `--resume`; metis_cli/runs/ledger.py), then runs the jobs on N actors (one pipeline
load per actor, `--gpus-per-worker` GPUs each). Connects to the cluster at `--address` or
`RAY_ADDRESS`, else starts a local one for the run; an address that does not answer or actors the
cluster can never hold fail within `--ray-timeout` seconds with the missing resource named.
stdout and exit codes are the task commands': an output path (or a --json record) per finished
job; 0 all ok or skipped, 1 some failed (or the cluster failed mid-run), 2 usage error (also: Ray
not installed, unreachable cluster, impossible resources), 130/143 interrupted.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import typer

from metis_cli import options
from metis_cli.cli.params import command, group_params, param
from metis_cli.cli.report import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_USAGE,
    Printer,
    StdoutClosed,
    Terminated,
    configure_quiet,
    error_line,
    fail_usage,
    settings_of,
    signals,
    silence_stdout,
)
from metis_cli.errors import UsageError

TASKS_HELP = "enhance (se), tse, vc, tts or l2s."
GROUPS = (*options.COMMAND_GROUPS, options.RayOptions)


def _body(values: dict[str, Any]) -> None:
    from metis_cli.runs.ray import TASK_NAMES

    task = TASK_NAMES.get(values.pop("task"))
    if task is None:
        fail_usage(f"TASK: must be one of {', '.join(TASK_NAMES)}")
    groups = options.split(values, GROUPS)
    if groups[options.RayOptions].manifest is None:
        fail_usage("metis ray needs --manifest")
    if groups[options.RunControl].shard is not None:
        fail_usage("--shard: not with metis ray (Ray spreads the jobs over its workers)")
    report: options.ReportOptions = groups[options.ReportOptions]
    printer = Printer(f"ray {task}", as_json=report.json, quiet=report.quiet)
    configure_quiet(printer.quiet)
    code = EXIT_OK
    try:
        with signals():
            code = _run(printer, task, groups)
    except UsageError as exc:
        error_line(str(exc))
        code = EXIT_USAGE
    except StdoutClosed:
        silence_stdout()
        code = 141
    except KeyboardInterrupt:
        error_line("interrupted")
        code = EXIT_SIGINT
    except Terminated as exc:
        code = int(exc.code) if isinstance(exc.code, int) else EXIT_SIGTERM
    raise typer.Exit(code)


def _run(printer: Printer, task: str, groups: dict[type, Any]) -> int:
    from metis_cli import jobs
    from metis_cli.api import load
    from metis_cli.errors import InputError, MetisError
    from metis_cli.runs.ray import ClusterError, drive, load_kwargs
    from metis_cli.runs.session import Session

    ray_opts: options.RayOptions = groups[options.RayOptions]
    load_kw = load_kwargs(groups)
    try:
        pipe = load(task, **load_kw)  # checks the options and the model card on the driver (no weights)
    except MetisError as exc:
        error_line(str(exc))
        return EXIT_USAGE if isinstance(exc, InputError) else EXIT_FAILED
    request = jobs.Request(
        task=task,
        manifest=ray_opts.manifest,
        output=ray_opts.output,
        seed=groups[options.JobDefaults].seed,
        existing=groups[options.OutputPolicy].existing,
    )
    plan = jobs.plan(request)
    for w in plan.warnings:
        printer.message(f"warning: {w}")
    ctl: options.RunControl = groups[options.RunControl]
    session = Session.open(
        plan,
        results=ctl.results,
        resume_run=ctl.resume,
        retry_failed=ctl.retry_failed,
        batch_size=groups[options.EngineOptions].batch_size,
        length_buckets=ctl.length_buckets,
        long_seconds=groups[options.LongformOptions].chunk_seconds if task in ("se", "tse", "vc") else 0.0,
        message=printer.message,
        settings=settings_of(pipe, groups),
    )
    failures: list[str] = []
    total = len(session.plan)
    try:
        verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
        records = drive(session, load_kw, ray_opts, groups[options.EngineOptions].batch_size, verbose)
        with printer.progress(total) as progress:
            bar = progress.add_task(printer.task, total=total)
            for rec in records:
                progress.advance(bar)
                _print(printer, rec, failures)
    except UsageError as exc:
        error_line(str(exc))
        return session.finish(EXIT_USAGE)
    except ClusterError as exc:
        error_line(str(exc))
        return session.finish(EXIT_FAILED)
    except BaseException:
        session.close()  # the shard's lock is released however the run ends
        raise
    code = EXIT_OK
    if failures:
        printer.message(f"{len(failures)} of {total} job(s) failed:")
        for line in failures:
            printer.message(f"  {line}")
        code = EXIT_FAILED
    return session.finish(code)


def _print(printer: Printer, rec: dict[str, Any], failures: list[str]) -> None:
    status = rec.get("status")
    if printer.as_json:
        printer.result(json.dumps(rec, ensure_ascii=False))
    elif status == "ok":
        printer.result(str(rec.get("output")))
    if status == "error":
        failures.append(str(rec.get("error")))
        printer.error(f"failed: {rec.get('error')}")
    elif status == "skipped":
        printer.message(f"skipped: {rec.get('output')} (exists)")
    elif not printer.as_json:
        printer.message(f"ok: {rec.get('output')} (seed {rec.get('seed')})")


def register(app: typer.Typer) -> None:
    params = [
        param("task", str, typer.Argument(..., metavar="TASK", help=TASKS_HELP)),
        *group_params(GROUPS),
    ]
    app.command("ray")(
        command(
            _body,
            params,
            "Run a manifest on a Ray cluster (Ray Data actors, one pipeline load each); same ledger "
            "and exit codes as the task commands.",
        )
    )

"""`metis ray TASK --manifest jobs.jsonl --workers N`: a manifest over a Ray cluster (Ray Data).

Plans on the driver exactly like the task commands (`jobs.plan`), resumes from and appends to the
same results ledger (`--results`, `--resume`; metis_cli/runs/ledger.py), then runs the jobs on N
actors (`metis_cli.runs.ray`, one pipeline load per actor, `--gpus-per-worker` GPUs each). Connects
to the cluster at `--address` or `RAY_ADDRESS`, else starts a local one for the run. stdout and
exit codes are the task commands': an output path (or a --json record) per finished job; 0 all
ok or skipped, 1 some failed, 2 usage error (also: Ray not installed), 130/143 interrupted.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import typer

from metis_cli import options as O
from metis_cli.cli.params import command, group_params, param
from metis_cli.cli.report import (
    ENDING_SIGNALS,
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
    signals,
    silence_stdout,
)
from metis_cli.errors import UsageError

TASKS_HELP = "enhance (se), tse, vc, tts or l2s."
_OPTION_NAMES = {n for g in O.COMMAND_GROUPS for n in O.names(g)}


def _body(values: dict[str, Any]) -> None:
    from metis_cli.runs.ray import TASK_NAMES

    task = TASK_NAMES.get(values["task"])
    if task is None:
        fail_usage(f"TASK: must be one of {', '.join(TASK_NAMES)} (got {values['task']!r})")
    if values["manifest"] is None:
        fail_usage("metis ray needs --manifest")
    if values["workers"] < 1:
        fail_usage(f"--workers: must be >= 1 (got {values['workers']})")
    if values["gpus_per_worker"] < 0 or values["cpus_per_worker"] <= 0:
        fail_usage("--gpus-per-worker: must be >= 0, --cpus-per-worker: must be > 0")
    groups = O.split({k: v for k, v in values.items() if k in _OPTION_NAMES})
    if groups[O.RunControl].shard is not None:
        fail_usage("--shard: not with metis ray (Ray spreads the jobs over its workers)")
    report: O.ReportOptions = groups[O.ReportOptions]
    printer = Printer(f"ray {values['task']}", as_json=report.json, quiet=report.quiet)
    configure_quiet(printer.quiet)
    code = EXIT_OK
    try:
        with signals():
            code = _run(printer, task, values, groups)
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


def _load_kw(groups: dict[type, Any]) -> dict[str, Any]:
    """`metis_cli.load` keywords for the actors (paths absolute: workers run in other folders)."""
    kw: dict[str, Any] = {}
    for g in (O.ModelOptions, O.EngineOptions, O.LongformOptions, O.DecodingOptions):
        kw.update({k: getattr(groups[g], k) for k in O.names(g)})
    kw["offline"] = kw["offline"] or None
    for k in ("checkpoint_dir", "visual_checkpoint"):
        if kw.get(k) is not None:
            kw[k] = os.path.abspath(str(kw[k]))
    model = kw.get("model")
    if model is not None and Path(model).is_dir():
        kw["model"] = os.path.abspath(model)
    return kw


def _run(printer: Printer, task: str, values: dict[str, Any], groups: dict[type, Any]) -> int:
    from metis_cli import jobs as J
    from metis_cli.api import load
    from metis_cli.errors import InputError, MetisError
    from metis_cli.runs.ledger import Session
    from metis_cli.runs.ray import actor_class, plan_rows

    ctl: O.RunControl = groups[O.RunControl]
    eng: O.EngineOptions = groups[O.EngineOptions]
    load_kw = _load_kw(groups)
    try:
        load(task, **load_kw)  # checks the options and the model card on the driver (no weights)
    except MetisError as exc:
        error_line(str(exc))
        return EXIT_USAGE if isinstance(exc, InputError) else EXIT_FAILED
    plan = J.plan(
        J.Request(
            task=task,
            manifest=values["manifest"],
            output=values.get("output"),
            seed=groups[O.JobDefaults].seed,
            existing=groups[O.OutputPolicy].existing,
        )
    )
    for w in plan.warnings:
        printer.message(f"warning: {w}")
    long_seconds = groups[O.LongformOptions].chunk_seconds if task in ("se", "tse", "vc") else 0.0
    session = Session.open(
        plan,
        results=ctl.results,
        resume_run=ctl.resume,
        retry_failed=ctl.retry_failed,
        batch_size=eng.batch_size,
        length_buckets=ctl.length_buckets,
        long_seconds=long_seconds,
        message=printer.message,
    )
    rows = plan_rows(session.plan)
    if not rows:
        return session.finish(EXIT_OK)
    try:
        import ray
        import ray.data
    except ImportError:
        error_line("metis ray needs Ray Data: pip install 'metis-cli[ray]'")
        return session.finish(EXIT_USAGE)
    address = values.get("address") or os.environ.get("RAY_ADDRESS") or None
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    if not verbose:  # Ray Data's execution notes and plans: not for stderr unless --verbose
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    started = not ray.is_initialized()
    if started:
        local = {} if address is not None or values["num_cpus"] is None else {"num_cpus": values["num_cpus"]}
        handlers = {sig: signal.getsignal(sig) for sig in (*ENDING_SIGNALS, signal.SIGINT)}
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=verbose,
            logging_level="DEBUG" if verbose else "ERROR",
            **local,
        )
        for sig, handler in handlers.items():  # Ray's own handlers abort the driver (no clean-up)
            if handler is not None:
                signal.signal(sig, handler)
    failures: list[str] = []
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours below (stderr); stdout carries results only
        batch = max(1, eng.batch_size)
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), len(rows) // batch)))
        results = ds.map_batches(
            actor_class(task),
            fn_constructor_kwargs=load_kw,
            compute=ray.data.ActorPoolStrategy(size=values["workers"]),
            num_cpus=values["cpus_per_worker"],
            num_gpus=values["gpus_per_worker"] or None,
            batch_size=batch,
            batch_format="pyarrow",
        )
        with printer.progress(len(rows)) as progress:
            bar = progress.add_task(printer.task, total=len(rows))
            try:
                for block in results.iter_batches(batch_size=None, batch_format="pyarrow"):
                    for row in block.to_pylist():
                        rec = json.loads(row["record"])
                        session.record_dict(rec, row["key"])
                        progress.advance(bar)
                        _print(printer, rec, failures)
            except (StdoutClosed, Terminated):
                raise
            except Exception as exc:  # the cluster failed (a worker died, the head went away)
                why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                error_line(
                    f"ray: {type(exc).__name__}: {why} (finished jobs are in the ledger; rerun with --resume)"
                )
                return session.finish(EXIT_FAILED)
    finally:
        if started:
            ray.shutdown()
    code = EXIT_OK
    if failures:
        printer.message(f"{len(failures)} of {len(rows)} job(s) failed:")
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
        param(
            "manifest",
            Path | None,
            typer.Option(None, "--manifest", help="Jobs file (.jsonl or .csv), one job per line."),
        ),
        param("output", Path | None, typer.Option(None, "-o", "--output", help="Output folder.")),
        param("workers", int, typer.Option(1, "--workers", help="Ray actors, each with its own pipeline.")),
        param(
            "gpus_per_worker",
            float,
            typer.Option(0.0, "--gpus-per-worker", help="GPUs per actor (0: CPU actors)."),
        ),
        param("cpus_per_worker", float, typer.Option(1.0, "--cpus-per-worker", help="CPUs per actor.")),
        param(
            "num_cpus",
            int | None,
            typer.Option(None, "--num-cpus", help="CPUs of a local cluster (default: all of them)."),
        ),
        param(
            "address",
            str | None,
            typer.Option(
                None, "--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local cluster)."
            ),
        ),
        *group_params(O.COMMAND_GROUPS),
    ]
    app.command("ray")(
        command(
            _body,
            params,
            "Run a manifest on a Ray cluster (Ray Data actors, one pipeline load each); same ledger "
            "and exit codes as the task commands.",
        )
    )

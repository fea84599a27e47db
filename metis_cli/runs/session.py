"""A run session: shard -> resume filter -> length buckets -> ledger header, then one record per
finished job and a summary at the end (the CLI and `metis ray` open one per process)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metis_cli import jobs as J
from metis_cli.errors import UsageError
from metis_cli.runs.buckets import Buckets, bucket
from metis_cli.runs.ledger import (
    Ledger,
    Resumed,
    clean_stale_temps,
    header,
    job_record,
    latest,
    ledger_path,
    pending_record,
    read_ledger,
    report_key,
    resume,
    run_ledgers,
)
from metis_cli.runs.shard import Shard, select, torchrun_barrier


def check_run_control(results: str | os.PathLike | None, resume_run: bool, retry_failed: bool) -> None:
    """Usage errors of the run-control flags, checked before anything loads (no torch)."""
    if resume_run and results is None:
        raise UsageError("--resume: needs --results FILE (the ledger of the run to resume)")
    if not retry_failed and not resume_run:
        raise UsageError("--no-retry-failed: only with --resume")


@dataclass
class Session:
    """One run's shard, resume decisions, length buckets and ledger (`Session.open`)."""

    plan: J.Plan
    shard: Shard | None = None
    ledger: Ledger | None = None
    buckets: Buckets | None = None
    resumed: Resumed | None = None
    counts: dict[str, int] = field(default_factory=dict)
    message: Callable[[str], None] = lambda text: None
    wait_for_ranks: bool = True  # torchrun: the shards end together (`shard.torchrun_barrier`)

    @classmethod
    def open(
        cls,
        plan: J.Plan,
        shard: Shard | None = None,
        results: str | os.PathLike | None = None,
        resume_run: bool = False,
        retry_failed: bool = True,
        batch_size: int = 1,
        length_buckets: bool = True,
        long_seconds: float = 0.0,
        message: Callable[[str], None] = lambda text: None,
    ) -> Session:
        check_run_control(results, resume_run, retry_failed)
        total = len(plan)
        mine = select(plan, shard)
        if shard is not None:
            message(f"shard {shard}: {len(mine)} of {total} job(s)")
        session = cls(mine, shard, message=message)
        path = None if results is None else ledger_path(results, shard)
        if path is not None:
            if not resume_run and path.is_file() and path.stat().st_size > 0:
                raise UsageError(
                    f"{path}: results ledger exists (add --resume to continue that run, or remove it)"
                )
            if resume_run:
                records = latest(r for p in run_ledgers(results) for r in read_ledger(p))
                session.resumed = resume(mine, records, retry_failed)
                session.plan = session.resumed.plan
                for why in session.resumed.rerun:
                    message(f"warning: {why}; running it again")
                left = len(session.plan)
                message(
                    f"resume: {session.resumed.done} job(s) done before, {left} to run"
                    + (f", {len(session.resumed.not_retried)} failed not retried" if not retry_failed else "")
                )
                folders = {Path(j.output).parent for j in session.plan.jobs if not J.is_stdout(j.output)}
                for p in clean_stale_temps(folders):
                    message(f"removed {p} (temporary file of an interrupted run)")
        if batch_size > 1:
            session.buckets = bucket(session.plan, batch_size, long_seconds=long_seconds, sort=length_buckets)
            session.plan = session.buckets.plan
        if path is not None:
            session.ledger = Ledger(path).open()
            session.ledger.append(header(plan.task, shard, total, len(mine), resume_run), sync=False)
            for job in session.plan.jobs:
                session.ledger.append(pending_record(job, shard), sync=False)
            session.ledger.sync()
        return session

    def record(self, report: Any) -> None:
        """A finished job's report (`api.Report`): counted, and appended to the ledger."""
        self.record_dict(report.to_dict(), report_key(report))

    def record_dict(self, report: Mapping[str, Any], key: str) -> None:
        """A finished job's `--json` record (e.g. a Ray result row's), under its planned key."""
        status = str(report.get("status"))
        self.counts[status] = self.counts.get(status, 0) + 1
        if self.ledger is not None:
            self.ledger.append(job_record(report, key, self.shard))

    def padding_summary(self) -> dict[str, Any] | None:
        if self.buckets is None:
            return None
        b, o = self.buckets.bucketed, self.buckets.original
        return {
            "efficiency": None if b.efficiency is None else round(b.efficiency, 4),
            "plan_order_efficiency": None if o.efficiency is None else round(o.efficiency, 4),
            "useful_seconds": round(b.useful, 3),
            "padded_seconds": round(b.padded, 3),
            "batches": b.batches,
            "length_buckets": self.buckets.sorted,
        }

    def finish(self, code: int) -> int:
        """End the run: summary (stderr and ledger), ledger closed; the exit code (1 when jobs
        that failed before were not retried)."""
        pad = self.padding_summary()
        if pad is not None and pad["efficiency"] is not None:
            if pad["length_buckets"]:
                self.message(
                    f"padding efficiency {pad['efficiency']:.2f} with length buckets "
                    f"({pad['plan_order_efficiency']:.2f} in plan order; estimated from input lengths)"
                )
            else:
                self.message(f"padding efficiency {pad['efficiency']:.2f} (estimated from input lengths)")
        not_retried = self.resumed.not_retried if self.resumed is not None else []
        if not_retried:
            self.message(f"{len(not_retried)} job(s) failed before and were not retried (--no-retry-failed):")
            for rec in not_retried:
                self.message(f"  {rec.get('error') or rec.get('origin') or rec.get('output')}")
            code = code or 1
        if self.ledger is not None:
            summary = {
                "summary": True,
                "shard": None if self.shard is None else str(self.shard),
                "counts": dict(self.counts),
                "done_before": 0 if self.resumed is None else self.resumed.done,
                "not_retried": len(not_retried),
                "padding": pad,
                "exit_code": code,
                "time": time.time(),
            }
            self.ledger.append(summary)
            self.ledger.close()
        if self.shard is not None and self.wait_for_ranks:
            torchrun_barrier()
        return code

"""A run session: shard -> resume filter -> length buckets -> ledger header, then one record per
finished job and a summary at the end (the CLI and `metis ray` open one per process)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metis_cli import jobs
from metis_cli.errors import UsageError
from metis_cli.runs.buckets import Buckets, bucket
from metis_cli.runs.ledger import (
    LEDGER_TAG,
    LEDGER_VERSION,
    Ledger,
    Resumed,
    ShardLock,
    clean_stale_temps,
    file_identity,
    header,
    identity_digest,
    job_identity,
    job_record,
    latest,
    ledger_path,
    pending_record,
    plan_keys,
    read_ledger,
    resume,
    run_ledgers,
)
from metis_cli.runs.shard import Shard, select, torchrun_barrier

KEYS_IN_FULL = 100_000  # a bigger shard lists only its keys' digests in the header (no output names)


def check_run_control(results: str | os.PathLike | None, resume_run: bool, retry_failed: bool) -> None:
    """Usage errors of the run-control flags, checked before anything loads (no torch)."""
    if resume_run and results is None:
        raise UsageError("--resume: needs --results FILE (the ledger of the run to resume)")
    if not retry_failed and not resume_run:
        raise UsageError("--no-retry-failed: only with --resume")


@dataclass
class Session:
    """One run's shard, resume decisions, length buckets and ledger (`Session.open`)."""

    plan: jobs.Plan
    shard: Shard | None = None
    ledger: Ledger | None = None
    buckets: Buckets | None = None
    resumed: Resumed | None = None
    counts: dict[str, int] = field(default_factory=dict)
    message: Callable[[str], None] = lambda text: None
    wait_for_ranks: bool = True  # torchrun: the shards end together (`shard.torchrun_barrier`)
    settings: dict[str, Any] | None = None  # the run's resolved options (decoding, model, ...)
    lock: ShardLock | None = None
    keys: list[str] = field(default_factory=list)  # the keys of `plan.items`, in run order
    _reported: int = 0
    _by_key: dict[str, Any] = field(default_factory=dict)
    _by_id: dict[int, str] = field(default_factory=dict)

    @classmethod
    def open(
        cls,
        plan: jobs.Plan,
        shard: Shard | None = None,
        results: str | os.PathLike | None = None,
        resume_run: bool = False,
        retry_failed: bool = True,
        batch_size: int = 1,
        length_buckets: bool = True,
        long_seconds: float = 0.0,
        message: Callable[[str], None] = lambda text: None,
        settings: Mapping[str, Any] | None = None,
        threads: int | None = None,
    ) -> Session:
        """Select the shard's items, take the ledger's lock (`ShardLock`: a second process on
        the same shard is a UsageError naming the first), drop what a resumed run finished,
        order by length buckets and write the ledger's header. `settings`: the resolved options
        recorded with each success (a resume reruns jobs recorded with other settings)."""
        check_run_control(results, resume_run, retry_failed)
        total = len(plan)
        all_keys = plan_keys(plan)
        mine = select(plan, shard)
        keys = all_keys if shard is None else all_keys[shard.index :: shard.count]
        if shard is not None:
            message(f"shard {shard}: {len(mine)} of {total} job(s)")
        settings = None if settings is None else json.loads(json.dumps(dict(settings), default=str))
        session = cls(mine, shard, message=message, settings=settings, keys=list(keys))
        path = None if results is None else ledger_path(results, shard)
        if path is not None:
            session.lock = ShardLock(path).acquire()
        try:
            if path is not None:
                session._prepare(path, results, resume_run, retry_failed)
            session._order(batch_size, length_buckets, long_seconds)
            session._index()
            if path is not None:
                session.ledger = Ledger(path).open()
                run = identity_digest({"keys": [k.split("|", 1)[0] for k in all_keys]})
                listed = keys if len(keys) <= KEYS_IN_FULL else [k.split("|", 1)[0] for k in keys]
                head = header(plan.task, shard, total, len(mine), resume_run, listed, run, settings, threads)
                session.ledger.append(head)
        except BaseException:
            session.close()
            raise
        return session

    def _prepare(self, path: Path, results: str | os.PathLike, resume_run: bool, retry_failed: bool) -> None:
        """The ledger exists only with --resume; resume decisions; stale temporaries removed."""
        if not resume_run:
            if path.is_file() and path.stat().st_size > 0:
                raise UsageError(
                    f"{path}: results ledger exists (add --resume to continue that run, or remove it)"
                )
            return
        records = []
        for p in run_ledgers(results):
            for rec in read_ledger(p):
                if rec.get("ledger") == LEDGER_TAG and rec.get("version", 1) < LEDGER_VERSION:
                    raise UsageError(
                        f"{p}: written by an older metis (ledger version {rec.get('version', 1)}, jobs "
                        "named by manifest line); finish it with that version or start a new --results file"
                    )
                records.append(rec)
        mine = self.plan
        self.resumed = resume(mine, latest(records), retry_failed, self.keys, self.settings)
        self.plan, self.keys = self.resumed.plan, self.resumed.keys
        for why in self.resumed.rerun:
            self.message(f"warning: {why}; running it again")
        left = len(self.plan)
        self.message(
            f"resume: {self.resumed.done} job(s) done before, {left} to run"
            + (f", {len(self.resumed.not_retried)} failed not retried" if not retry_failed else "")
        )
        # every output folder of the shard, also those with no job left to run
        outputs = [i if isinstance(i, jobs.Job) else i.job for i in mine.items]
        folders = {Path(j.output).parent for j in outputs if j is not None and not jobs.is_stdout(j.output)}
        for p in clean_stale_temps(folders):
            self.message(f"removed {p} (temporary file of an interrupted run)")

    def _order(self, batch_size: int, length_buckets: bool, long_seconds: float) -> None:
        if batch_size <= 1:
            return
        by_item = {id(item): key for item, key in zip(self.plan.items, self.keys, strict=True)}
        self.buckets = bucket(self.plan, batch_size, long_seconds=long_seconds, sort=length_buckets)
        self.plan = self.buckets.plan
        self.keys = [by_item[id(item)] for item in self.plan.items]

    def _index(self) -> None:
        """Key <-> item maps of the final plan (built once: `started` may come from threads)."""
        self._by_key = dict(zip(self.keys, self.plan.items, strict=True))
        self._by_id = {id(item): key for key, item in self._by_key.items()}

    def started(self, job: jobs.Job) -> None:
        """A job is about to run: a `pending` record (in flight until its record comes)."""
        if self.ledger is not None:
            self.ledger.append(pending_record(job, self.shard, self._by_id[id(job)]), sync=False)

    def start_all(self) -> None:
        """Every job of the plan is handed over at once (Ray): all of them in flight."""
        if self.ledger is not None:
            for item, key in zip(self.plan.items, self.keys, strict=True):
                if isinstance(item, jobs.Job):
                    self.ledger.append(pending_record(item, self.shard, key), sync=False)
            self.ledger.sync()

    def record(self, report: Any) -> None:
        """A finished job's report (`api.Report`, in plan order): counted, and appended to the
        ledger with what its output depends on (`ledger.job_identity`)."""
        n = self._reported
        self._reported += 1
        self.record_dict(report.to_dict(), self.keys[n])

    def record_dict(self, report: Mapping[str, Any], key: str) -> None:
        """A finished job's `--json` record (e.g. a Ray result row's), under its planned key."""
        status = str(report.get("status"))
        self.counts[status] = self.counts.get(status, 0) + 1
        if self.ledger is None:
            return
        rec = job_record(report, key, self.shard)
        if status == "ok":
            item = self._by_key.get(key)
            job = item if isinstance(item, jobs.Job) else getattr(item, "job", None)
            if job is not None:
                identity = job_identity(job, self.settings)
                rec["identity"] = identity_digest(identity)
                rec["input_identity"] = {role: file_identity(p) for role, p in sorted(job.inputs.items())}
                rec["settings"] = self.settings
        self.ledger.append(rec)

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
        self.close()
        if self.shard is not None and self.wait_for_ranks:
            torchrun_barrier()
        return code

    def close(self) -> None:
        """Close the ledger and release the shard's lock (idempotent)."""
        if self.ledger is not None:
            self.ledger.close()
        if self.lock is not None:
            self.lock.release()

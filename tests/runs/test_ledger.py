"""The results ledger: durable records, resume decisions, stale temporaries, `metis results`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from metis_cli import jobs as planning
from metis_cli.cli import app
from metis_cli.errors import UsageError
from metis_cli.runs.ledger import (
    Ledger,
    clean_stale_temps,
    header,
    item_key,
    latest,
    ledger_path,
    output_complete,
    read_ledger,
    resume,
    run_ledgers,
    summarize,
)
from metis_cli.runs.session import Session
from metis_cli.runs.shard import Shard


def _job(tmp: Path, n: int) -> planning.Job:
    return planning.make_job(
        "se", [tmp / f"in{n}.wav"], tmp / f"out{n}.wav", seed=n, origin=f"jobs.jsonl:{n}"
    )


def _ok(job: planning.Job, seconds: float, t: float) -> dict:
    return {
        "key": item_key(job),
        "status": "ok",
        "output": str(job.output),
        "output_seconds": seconds,
        "time": t,
    }


def _wav(path: Path, seconds: float) -> None:
    sf.write(path, np.zeros(int(seconds * 24_000), np.float32), 24_000)


def test_paths_and_discovery(tmp_path: Path):
    base = tmp_path / "res.jsonl"
    assert ledger_path(base, None) == base
    assert ledger_path(base, Shard(3, 8)).name == "res.shard-00003-of-00008.jsonl"
    assert ledger_path(tmp_path / "res", Shard(0, 2)).name == "res.shard-00000-of-00002.jsonl"
    for s in (Shard(0, 2), Shard(1, 2)):
        ledger_path(base, s).write_text("")
    (tmp_path / "res.shard-00001-of-00002.jsonl.bak").write_text("")
    (tmp_path / "other.shard-00000-of-00002.jsonl").write_text("")
    assert [p.name for p in run_ledgers(base)] == [
        "res.shard-00000-of-00002.jsonl",
        "res.shard-00001-of-00002.jsonl",
    ]


def test_records_are_on_disk_at_once_and_torn_lines_are_skipped(tmp_path: Path):
    path = tmp_path / "l.jsonl"
    led = Ledger(path).open()
    led.append({"key": "a", "status": "ok", "time": 1})
    # a second reader sees the record while the writer is still open (flushed, fsync'd)
    assert [r["key"] for r in read_ledger(path)] == ["a"]
    led.close()
    with open(path, "a") as f:
        f.write('{"key": "b", "stat')  # a writer killed mid-line
    with Ledger(path) as led:
        led.append({"key": "c", "status": "error", "time": 2})
    assert [r["key"] for r in read_ledger(path)] == ["a", "c"]
    assert path.read_text().splitlines()[-1].startswith('{"key": "c"')


def test_latest_record_wins_pending_included():
    recs = [
        {"key": "a", "status": "error", "time": 1},
        {"key": "a", "status": "ok", "time": 2},
        {"key": "b", "status": "ok", "time": 1},
        {"key": "b", "status": "pending", "time": 3},
        {"key": "c", "status": "pending", "time": 5},
        {"summary": True, "time": 9},
        {"ledger": "metis-results", "time": 9},
    ]
    got = latest(recs)
    assert {k: r["status"] for k, r in got.items()} == {"a": "ok", "b": "pending", "c": "pending"}


def test_output_complete(tmp_path: Path):
    out = tmp_path / "o.wav"
    rec = {"status": "ok", "output": str(out), "output_seconds": 1.23}
    assert "missing" in output_complete(rec)
    _wav(out, 1.23)
    assert output_complete(rec) is None
    _wav(out, 0.8)
    assert "0.800 s" in output_complete(rec)
    out.write_bytes(b"RIFF....")
    assert "unreadable" in output_complete(rec)
    sf.write(out, np.zeros(1000, np.float32), 16_000)
    assert "16000 Hz" in output_complete(rec)


def test_resume_decisions(tmp_path: Path):
    jobs = [_job(tmp_path, n) for n in range(1, 7)]
    for j in jobs:
        _wav(j.inputs["input"], 1.0)
    _wav(jobs[0].output, 1.0)  # 1: ok and complete → done
    _wav(jobs[1].output, 0.5)  # 2: ok but truncated → run again, replacing it
    # 3: ok but the output is gone → run again
    _wav(jobs[3].output, 1.0)  # 4: pending (killed after its rename) → run again, replacing it
    # 5: failed → retried (or not); 6: no record → as planned
    recs = latest(
        [
            _ok(jobs[0], 1.0, 1),
            _ok(jobs[1], 1.0, 1),
            _ok(jobs[2], 1.0, 1),
            {"key": item_key(jobs[3]), "status": "pending", "time": 1},
            {"key": item_key(jobs[4]), "status": "error", "error": "boom", "time": 1},
        ]
    )
    plan = planning.plan_jobs("se", jobs, existing="error")  # existing outputs are rejected by planning
    assert isinstance(plan.items[0], planning.Rejected) and isinstance(plan.items[3], planning.Rejected)
    r = resume(plan, recs, retry_failed=True)
    assert r.done == 1 and len(r.rerun) == 2 and not r.not_retried
    left = {str(i.output): i for i in r.plan.items}
    assert set(left) == {str(j.output) for j in jobs[1:]}
    assert all(isinstance(i, planning.Job) for i in r.plan.items)  # own outputs: runnable again
    r = resume(plan, recs, retry_failed=False)
    assert [x["error"] for x in r.not_retried] == ["boom"]
    assert str(jobs[4].output) not in {str(i.output) for i in r.plan.items}


def test_failed_job_whose_output_is_not_ours_stays_rejected(tmp_path: Path):
    job = _job(tmp_path, 1)
    _wav(job.output, 1.0)  # the user's file: the first run failed with "exists"
    recs = latest([{"key": item_key(job), "status": "error", "error": "exists", "time": 1}])
    r = resume(planning.plan_jobs("se", [job]), recs)
    assert isinstance(r.plan.items[0], planning.Rejected) and "exists" in r.plan.items[0].error


def test_stale_temporaries(tmp_path: Path):
    old = tmp_path / ".metis-aaaaaaaaaaaa.tmp"
    fresh = tmp_path / ".metis-bbbbbbbbbbbb.tmp"
    busy = tmp_path / ".metis-cccccccccccc.tmp"
    for p in (old, fresh, busy):
        p.write_bytes(b"x")
    past = time.time() - 3600
    os.utime(old, (past, past))
    os.utime(busy, (past, past))
    with open(busy, "rb"):  # a live writer on this machine holds it open
        removed = clean_stale_temps([tmp_path], grace=600)
    assert removed == [old] and fresh.exists() and busy.exists()
    assert clean_stale_temps([tmp_path], grace=0) and not busy.exists() and not fresh.exists()


def test_session_usage_errors(tmp_path: Path):
    plan = planning.plan_jobs("se", [_job(tmp_path, 1)])
    with pytest.raises(UsageError, match="--resume"):
        Session.open(plan, resume_run=True)
    with pytest.raises(UsageError, match="--no-retry-failed"):
        Session.open(plan, results=tmp_path / "r.jsonl", retry_failed=False)
    (tmp_path / "r.jsonl").write_text('{"key": "x"}\n')
    with pytest.raises(UsageError, match="exists"):
        Session.open(plan, results=tmp_path / "r.jsonl")


# ---- metis results ----------------------------------------------------------------------------------


def _ledger(path: Path, shard: Shard | None, total: int, recs: list[dict]) -> None:
    with Ledger(path) as led:
        led.append(header("se", shard, total, len(recs), False))
        for r in recs:
            led.append(r)


def _results(*args: str):
    return CliRunner().invoke(app, ["results", *args], catch_exceptions=False)


def test_results_complete_and_incomplete(tmp_path: Path):
    base = tmp_path / "res.jsonl"
    rec = lambda k, s, **kw: {"key": k, "status": s, "origin": k, "output": f"out/{k}.wav", "time": 1, **kw}  # noqa: E731
    _ledger(ledger_path(base, Shard(0, 2)), Shard(0, 2), 4, [rec("a", "ok"), rec("c", "skipped")])
    _ledger(ledger_path(base, Shard(1, 2)), Shard(1, 2), 4, [rec("b", "ok"), rec("d", "ok")])
    res = _results(str(base))
    assert res.exit_code == 0, res.stdout
    assert "ok 3, skipped 1, failed 0, missing 0" in res.stdout and "complete" in res.stdout
    js = json.loads(_results(str(base), "--json").stdout)
    assert (js["total"], js["shards"], js["ok"], js["complete"]) == (4, 2, 3, True)

    # shard 1 failed one job and was killed with another in flight
    _ledger(ledger_path(base, Shard(1, 2)), Shard(1, 2), 4, [rec("b", "error", error="b: boom", time=2),
                                                              rec("d", "pending", time=2)])  # fmt: skip
    res = _results(str(base))
    assert res.exit_code == 1
    assert "failed 1, missing 1" in res.stdout and "b: boom" in res.stdout
    assert "d: started, never finished" in res.stdout

    # a shard that never wrote its ledger: its jobs are missing
    ledger_path(base, Shard(1, 2)).unlink()
    js = json.loads(_results(str(base), "--json").stdout)
    assert _results(str(base)).exit_code == 1
    assert (js["unrecorded"], js["missing"], js["absent_shards"]) == (2, 2, ["1/2"])
    assert "2 job(s) never recorded (no ledger from shard(s) 1/2)" in _results(str(base)).stdout
    # one shard file named directly
    assert _results(str(ledger_path(base, Shard(0, 2)))).exit_code == 1
    # nothing there: usage error
    res = _results(str(tmp_path / "nothing.jsonl"))
    assert res.exit_code == 2 and "no results ledger" in res.stderr


def test_results_after_resuming_with_another_shard_count(tmp_path: Path):
    base = tmp_path / "r.jsonl"
    for shard, t in ((Shard(0, 2), 1), (Shard(1, 2), 1), (Shard(0, 3), 2), (Shard(2, 3), 2)):
        with Ledger(ledger_path(base, shard)) as led:
            led.append({**header("se", shard, 6, shard.size(6), t == 2), "time": t})
    s = summarize([base])
    assert (s.shards, s.absent_shards, s.total, s.unrecorded) == (3, [1], 6, 6)

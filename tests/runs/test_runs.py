"""Sharded, resumable runs end to end on the tiny bundle: SLURM arrays simulated through the
environment (in process), a 2-process torchrun, a SIGKILLed shard resumed, a local Ray cluster."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metis_cli.cli import app
from metis_cli.runs.ledger import latest, ledger_path, output_complete, run_ledgers
from metis_cli.runs.shard import Shard

from .conftest import BAD_LINES, FAST, N_JOBS, cli_env, finished, good_outputs, records, subprocess_env

MANIFEST_ORIGINS = {f"jobs.jsonl:{n}" for n in range(1, N_JOBS + 1)}


def _metis(args: list[str], bundle: Path, **env: str | None):
    return CliRunner().invoke(app, args, env=cli_env(bundle, **env), catch_exceptions=False)


def _all_finished(root: Path, base: str = "res.jsonl") -> list[dict]:
    return [r for p in run_ledgers(root / base) for r in finished(p)]


def _check_complete_run(root: Path, recs: list[dict], out: str = "out") -> None:
    """Every manifest line recorded; every good output written exactly once and complete; the
    bad lines recorded as errors; no temporary files left."""
    assert {r["origin"] for r in recs} == MANIFEST_ORIGINS
    ok = [r for r in recs if r["status"] == "ok"]
    assert Counter(Path(r["output"]).as_posix() for r in ok) == Counter(good_outputs(root, out))
    bad = {r["origin"]: r for r in recs if r["status"] == "error"}
    assert set(bad) == {f"jobs.jsonl:{n}" for n in BAD_LINES}
    assert "missing.wav" in bad[f"jobs.jsonl:{BAD_LINES[0]}"]["error"]
    assert "not valid JSON" in bad[f"jobs.jsonl:{BAD_LINES[1]}"]["error"]
    for r in ok:
        assert output_complete(r, root / r["output"]) is None
    assert sorted(p.name for p in (root / out).iterdir()) == sorted(
        Path(o).name for o in good_outputs(root, out)
    )


def _stamps(root: Path, out: str = "out") -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (root / out).glob("*.wav")}


def test_slurm_array_shards_and_resume(tiny_bundle, corpus, monkeypatch):
    root = corpus.parent
    monkeypatch.chdir(root)
    base = ["enhance", "--manifest", "jobs.jsonl", "-o", "out", "--results", "res.jsonl", *FAST]
    # array task 1 of --array=0-1 (no bad lines in shard 1), padded batches of 3 with length buckets
    res = _metis([*base, "--json", "--batch-size", "3"], tiny_bundle,
                 SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="2")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert "shard 1/2: 12 of 24 job(s)" in res.stderr and "padding efficiency" in res.stderr
    reps = [json.loads(line) for line in res.stdout.splitlines()]
    assert {r["origin"] for r in reps} == {f"jobs.jsonl:{n}" for n in range(2, N_JOBS + 1, 2)}
    lengths = [r["audio_seconds"] for r in reps]
    assert lengths == sorted(lengths, reverse=True)  # longest first (one window)
    shard1 = ledger_path(root / "res.jsonl", Shard(1, 2))
    summary = json.loads(shard1.read_text().splitlines()[-1])
    pad = summary["padding"]
    assert summary["summary"] and pad["length_buckets"] and pad["efficiency"] >= pad["plan_order_efficiency"]
    # merging with shard 0 absent: its 12 jobs are missing
    res = _metis(["results", "res.jsonl"], tiny_bundle)
    assert res.exit_code == 1 and "12 job(s) never recorded (no ledger from shard(s) 0/2)" in res.stdout

    # array task 1 of --array=1-2 is shard 0; it holds both bad lines
    res = _metis(
        base, tiny_bundle, SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_MAX="2"
    )
    assert res.exit_code == 1 and "2 of 12 job(s) failed" in res.stderr
    _check_complete_run(root, _all_finished(root))
    res = _metis(["results", "res.jsonl", "--json"], tiny_bundle)
    js = json.loads(res.stdout)
    assert res.exit_code == 1 and (js["ok"], js["failed"], js["missing"], js["total"]) == (22, 2, 0, 24)

    # a rerun without --resume would mix runs: refused
    res = _metis(base, tiny_bundle, SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_TASK_COUNT="2")
    assert res.exit_code == 2 and "--resume" in res.stderr
    # resume without retrying failures: nothing runs, still exit 1
    stamps = _stamps(root)
    n_before = len(records(ledger_path(root / "res.jsonl", Shard(0, 2))))
    res = _metis([*base, "--resume", "--no-retry-failed"], tiny_bundle,
                 SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_TASK_COUNT="2")  # fmt: skip
    assert res.exit_code == 1 and "10 job(s) done before, 0 to run, 2 failed not retried" in res.stderr
    assert len(records(ledger_path(root / "res.jsonl", Shard(0, 2)))) == n_before
    # resume retrying them: only the two bad lines run (and fail) again
    res = _metis(
        [*base, "--resume", "--json"], tiny_bundle, SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_TASK_COUNT="2"
    )
    assert res.exit_code == 1
    assert sorted(json.loads(x)["origin"] for x in res.stdout.splitlines()) == [
        "jobs.jsonl:1",
        "jobs.jsonl:3",
    ]
    assert _stamps(root) == stamps  # nothing finished was written again
    # an output deleted after the run is made again on resume; the others are not touched
    (root / "out" / "x02.wav").unlink()
    res = _metis([*base, "--resume", "--shard", "1/2", "--json"], tiny_bundle)
    assert res.exit_code == 0 and [json.loads(x)["output"] for x in res.stdout.splitlines()] == [
        "out/x02.wav"
    ]
    assert "out/x02.wav: output missing; running it again" in res.stderr
    after = _stamps(root)
    assert {k: v for k, v in after.items() if k != "x02.wav"} == {
        k: v for k, v in stamps.items() if k != "x02.wav"
    }
    _check_complete_run(root, list(latest(_all_finished(root)).values()))
    assert _metis(["results", "res.jsonl"], tiny_bundle).exit_code == 1  # the two bad lines


# ---- subprocesses: torchrun, SIGKILL, Ray (slow) ---------------------------------------------------


def _run(cmd: list[str], root: Path, bundle: Path, timeout: float = 400, **env: str):
    return subprocess.run(
        cmd, cwd=root, env=subprocess_env(bundle, **env), capture_output=True, text=True, timeout=timeout
    )


METIS = [sys.executable, "-m", "metis_cli.cli"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.mark.slow
def test_torchrun_two_processes(tiny_bundle, corpus):
    root = corpus.parent
    cmd = [*TORCHRUN, "-m", "metis_cli.cli", "enhance", "--manifest", "jobs.jsonl", "-o", "out"]
    res = _run([*cmd, "--results", "res.jsonl", "--json", "--batch-size", "2", *FAST], root, tiny_bundle)
    assert res.returncode == 1, res.stderr[-3000:]  # the two bad lines (both in rank 0's shard)
    assert "shard 0/2: 12 of 24 job(s)" in res.stderr and "shard 1/2: 12 of 24 job(s)" in res.stderr
    files = run_ledgers(root / "res.jsonl")
    assert [p.name for p in files] == [ledger_path(Path("res.jsonl"), Shard(i, 2)).name for i in range(2)]
    for i, p in enumerate(files):
        recs = finished(p)
        assert {r["shard"] for r in recs} == {f"{i}/2"} and len(recs) == 12
        assert json.loads(p.read_text().splitlines()[-1])["summary"]  # each rank finished its shard
    recs = _all_finished(root)
    _check_complete_run(root, recs)
    stdout = [json.loads(line) for line in res.stdout.splitlines()]
    assert sorted(r["origin"] for r in stdout) == sorted(r["origin"] for r in recs)  # stdout = ledgers
    res = _run([*METIS, "results", "res.jsonl"], root, tiny_bundle)
    assert res.returncode == 1 and "ok 22, skipped 0, failed 2, missing 0" in res.stdout


@pytest.mark.slow
def test_sigkill_midway_then_resume(tiny_bundle, corpus):
    root = corpus.parent
    cmd = [*METIS, "enhance", "--manifest", "jobs.jsonl", "-o", "out", "--results", "res.jsonl", *FAST]
    ledger = root / "res.shard-00001-of-00002.jsonl"
    env = subprocess_env(tiny_bundle, RANK="1", WORLD_SIZE="2")  # a plain process per rank
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger.exists() and sum(r["status"] == "ok" for r in records(ledger)) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the shard finished before it could be killed"
    before = {r["key"]: r for r in finished(ledger)}
    assert 3 <= len(before) < 12
    stamps = _stamps(root)
    assert set(stamps) == {Path(r["output"]).name for r in before.values()}  # only finished ones exist
    for r in before.values():
        assert output_complete(r, root / r["output"]) is None
    n_lines = len(ledger.read_text().splitlines())
    stale = root / "out" / ".metis-0123456789ab.tmp"  # what a writer killed mid-file leaves
    stale.write_bytes(b"RIFF")

    # the same command with --resume: finishes the shard, redoes nothing that finished
    res = _run(
        [*cmd, "--resume", "--json"],
        root,
        tiny_bundle,
        RANK="1",
        WORLD_SIZE="2",
        METIS_STALE_TEMP_SECONDS="0",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resume: {len(before)} job(s) done before, {12 - len(before)} to run" in res.stderr
    rerun = [json.loads(line)["origin"] for line in res.stdout.splitlines()]
    assert not set(rerun) & {r["origin"] for r in before.values()}
    new = [r for r in finished(ledger)[len(before) :]]
    assert not {r["key"] for r in new} & set(before)
    assert len(ledger.read_text().splitlines()) > n_lines
    after = _stamps(root)
    assert {k: after[k] for k in stamps} == stamps  # the finished outputs were not written again
    assert not list((root / "out").glob(".metis-*"))  # no temporary file of the killed run is left
    assert f"removed out/{stale.name}" in res.stderr
    # shard 0 as a SLURM array task, then the whole run is there
    res = _run(cmd, root, tiny_bundle, SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_TASK_COUNT="2")
    assert res.returncode == 1
    _check_complete_run(root, list(latest(_all_finished(root)).values()))
    assert Counter(r["key"] for r in _all_finished(root) if r["status"] == "ok").most_common(1)[0][1] == 1


RAY_SCRIPT = r"""
import json, sys
import ray
from metis_cli.runs import ray as metis_ray

ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
ds = metis_ray.read_manifest("jobs.jsonl", "enhance", output="api_out")
out = ds.map_batches(
    metis_ray.Enhance,
    fn_constructor_kwargs={"steps": 2, "s2a_steps": "2,2", "device": "cpu"},
    compute=ray.data.ActorPoolStrategy(size=2),
    num_cpus=1,
    batch_size=2,
)
out = out.materialize()  # run once; then read and write the rows without running again
rows = out.take_all()
json.dump(rows, open("rows.json", "w"))
out.write_parquet("parquet")
ray.shutdown()
"""


@pytest.mark.slow
def test_ray_local_cluster(tiny_bundle, corpus):
    root = corpus.parent
    (root / "api_out").mkdir()
    (root / "ray_api.py").write_text(RAY_SCRIPT)
    res = _run([sys.executable, "ray_api.py"], root, tiny_bundle, RAY_AUTH_MODE="disabled")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads((root / "rows.json").read_text())
    import pyarrow.parquet as pq

    table = pq.read_table(root / "parquet")
    assert table.num_rows == N_JOBS and sorted(table.column("key").to_pylist()) == sorted(
        r["key"] for r in rows
    )
    assert len(rows) == N_JOBS and len({r["key"] for r in rows}) == N_JOBS
    assert len({r["pid"] for r in rows if r["status"] == "ok"}) == 2  # two actors did the work
    recs = [json.loads(r["record"]) for r in rows]
    for rec, row in zip(recs, rows, strict=True):
        assert rec["status"] == row["status"] and rec.get("seed") == row["seed"]
        if row["status"] == "ok":  # timing comes back with each row
            assert rec["processing_seconds"] > 0 and row["processing_seconds"] == rec["processing_seconds"]
    _check_complete_run(root, recs, out="api_out")

    # the CLI: a local cluster with 2 CPUs, 2 actors, the ledger; interrupted, then resumed
    cmd = [
        *METIS,
        "ray",
        "enhance",
        "--manifest",
        "jobs.jsonl",
        "-o",
        "out",
        "--workers",
        "2",
        "--num-cpus",
        "2",
    ]
    cmd += ["--results", "res.jsonl", "--batch-size", "2", *FAST]
    env = subprocess_env(tiny_bundle, RAY_AUTH_MODE="disabled")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ledger = root / "res.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger.exists() and sum(r["status"] == "ok" for r in records(ledger)) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # the driver stops its cluster on the way out
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    before = {r["key"] for r in finished(ledger) if r["status"] == "ok"}
    assert 2 <= len(before) < 22  # stopped midway
    stamps = {k: v for k, v in _stamps(root).items() if k in {Path(k2.split("|")[1]).name for k2 in before}}
    res = _run([*cmd, "--resume", "--json"], root, tiny_bundle, RAY_AUTH_MODE="disabled",
               METIS_STALE_TEMP_SECONDS="0")  # fmt: skip
    assert res.returncode == 1, res.stderr[-3000:]  # the two bad lines
    again = {json.loads(line)["origin"] for line in res.stdout.splitlines()}
    assert not again & {k.split("|")[0] for k in before}  # nothing finished ran again
    assert {k: v for k, v in _stamps(root).items() if k in stamps} == stamps
    _check_complete_run(root, list(latest(finished(ledger)).values()))
    assert not list((root / "out").glob(".metis-*"))
    res = _run([*METIS, "results", "res.jsonl", "--json"], root, tiny_bundle)
    assert res.returncode == 1 and json.loads(res.stdout)["ok"] == 22


def test_a_job_crosses_to_a_ray_actor_with_its_placement_policy(tmp_path):
    """The JSON a Ray actor gets keeps `overwrite` (a resumed job may replace its own output)
    and `seed_drawn`; everything else round-trips too."""
    import dataclasses

    from metis_cli import jobs
    from metis_cli.runs.ray import job_from_json, job_to_json

    job = jobs.make_job("se", [tmp_path / "a.wav"], tmp_path / "o.wav", seed=3, origin="m.jsonl:2")
    for overwrite, drawn in ((False, False), (True, True)):
        sent = dataclasses.replace(job, overwrite=overwrite, seed_drawn=drawn)
        back = job_from_json(job_to_json(sent))
        assert back == sent and back.overwrite is overwrite and back.seed_drawn is drawn

"""Client mode (`--server URL`) keeps the run contract: --shard, --results (a ledger written by the
client), --resume, and the `jobs.jsonl:LINE:` prefix of a job's error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from metis_cli.cli import app
from tests.serve.conftest import wav_bytes


def _cli(args: list[str], env: dict[str, str]):
    return CliRunner().invoke(app, args, env=env, catch_exceptions=False)


def test_client_mode_shards_ledger_and_resume(served, tmp_path, monkeypatch):
    for n in (1, 3, 4):
        (tmp_path / f"x{n}.wav").write_bytes(wav_bytes(0.6 + 0.1 * n, seed=n))
    rows = [{"input": str(tmp_path / f"x{n}.wav"), "seed": n} for n in (1, 2, 3, 4)]
    rows[1]["input"] = str(tmp_path / "missing.wav")
    (tmp_path / "jobs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    base = [
        "enhance",
        "--manifest",
        "jobs.jsonl",
        "-o",
        "out",
        "--server",
        served.url,
        "--results",
        "res.jsonl",
    ]

    # a real client process: shard 0/2 runs manifest lines 1 and 3 only, and writes its ledger
    env = {**os.environ, "METIS_API_KEY": served.key, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    res = subprocess.run([sys.executable, "-m", "metis_cli.cli", *base, "--shard", "0/2", "--json"],
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert [json.loads(line)["origin"] for line in res.stdout.splitlines()] == [
        "jobs.jsonl:1",
        "jobs.jsonl:3",
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x1.wav", "x3.wav"]
    ledger = [
        json.loads(line) for line in (tmp_path / "res.shard-00000-of-00002.jsonl").read_text().splitlines()
    ]
    assert ledger[0]["ledger"] == "metis-results" and ledger[0]["settings"]["mode"] == "client"
    assert sorted(r["status"] for r in ledger if "key" in r) == ["ok", "ok", "pending", "pending"]
    assert ledger[-1]["summary"] and ledger[-1]["counts"] == {"ok": 2}

    # shard 1/2: the missing input fails with its manifest line, like a local run's
    key_env = {"METIS_API_KEY": served.key}
    r = _cli([*base, "--shard", "1/2"], key_env)
    assert r.exit_code == 1
    assert f"failed: jobs.jsonl:2: {tmp_path / 'missing.wav'}: no such audio file" in r.stderr
    assert (tmp_path / "out" / "x4.wav").exists()
    # resumed: only the failed job is sent again
    stamp = (tmp_path / "out" / "x4.wav").stat().st_mtime_ns
    r = _cli([*base, "--shard", "1/2", "--resume", "--json"], key_env)
    assert r.exit_code == 1 and "resume: 1 job(s) done before, 1 to run" in r.stderr
    assert [json.loads(line)["origin"] for line in r.stdout.splitlines()] == ["jobs.jsonl:2"]
    assert (tmp_path / "out" / "x4.wav").stat().st_mtime_ns == stamp
    # the whole run, merged
    r = _cli(["results", "res.jsonl"], {})
    assert "4 job(s) planned in 2 shard(s)" in r.stdout and "ok 3, skipped 0, failed 1, missing 0" in r.stdout
    # without --resume the ledger is not overwritten
    r = _cli([*base, "--shard", "1/2"], key_env)
    assert r.exit_code == 2 and "results ledger exists" in r.stderr

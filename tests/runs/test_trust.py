"""Runs a cluster can trust (issue 23): jobs found again by content, changed rows rerun, honest
`metis results`, one owner per shard, stale temporaries removed, `--threads`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from typer.testing import CliRunner

from metis_cli.cli import app
from metis_cli.runs.ledger import Ledger, ShardLock, header, ledger_path
from metis_cli.runs.shard import Shard
from tests.conftest import FAST, speechlike

from .conftest import cli_env, finished, subprocess_env

METIS = [sys.executable, "-m", "metis_cli.cli"]


def _metis(args: list[str], bundle: Path, **env: str | None):
    return CliRunner().invoke(app, args, env=cli_env(bundle, **env), catch_exceptions=False)


def _manifest(root: Path, seeds: dict[int, int | None], name: str = "jobs.jsonl", top: str = "") -> Path:
    """root/in/xN.wav and a manifest with absolute input paths (a row per N; seed None: none);
    line 2 is a missing input. `top`: text put before the first row (a blank line)."""
    (root / "in").mkdir(exist_ok=True)
    lines = []
    for n, seed in seeds.items():
        wav = root / "in" / f"x{n}.wav"
        if not wav.exists():
            sf.write(wav, speechlike(0.5 + 0.1 * n, seed=n), 24_000)
        row = {"input": str(wav), "output": f"x{n}.wav"}
        if seed is not None:
            row["seed"] = seed
        lines.append(json.dumps(row))
    lines.insert(1, json.dumps({"input": str(root / "in" / "missing.wav")}))
    path = root / name
    path.write_text(top + "\n".join(lines) + "\n")
    return path


def _stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.wav")}


def test_resume_by_content_from_another_folder_renamed_edited(tiny_bundle, tmp_path, monkeypatch):
    root = tmp_path
    _manifest(root, {1: 11, 2: 12, 3: None})
    monkeypatch.chdir(root)
    res = _metis(["enhance", "--manifest", "jobs.jsonl", "-o", "out", "--results", "res.jsonl",
                  "--seed", "7", *FAST], tiny_bundle)  # fmt: skip
    assert res.exit_code == 1  # the missing input
    stamps = _stamps(root / "out")
    assert sorted(stamps) == ["x1.wav", "x2.wav", "x3.wav"]

    # from inside the output folder, the manifest renamed, given by its absolute path, with a blank
    # line at the top: every finished job is found, nothing runs again but the failed line
    (root / "jobs.jsonl").unlink()
    _manifest(root, {1: 11, 2: 12, 3: None}, name="renamed.jsonl", top="\n")
    monkeypatch.chdir(root / "out")
    res = _metis(["enhance", "--manifest", str(root / "renamed.jsonl"), "-o", ".", "--results",
                  "../res.jsonl", "--seed", "7", "--resume", "--json", *FAST], tiny_bundle)  # fmt: skip
    assert res.exit_code == 1
    assert "resume: 3 job(s) done before, 1 to run" in res.stderr
    again = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(r["origin"], r["status"]) for r in again] == [(f"{root / 'renamed.jsonl'}:3", "error")]
    assert _stamps(root / "out") == stamps
    summary = _metis(["results", "../res.jsonl"], tiny_bundle)
    assert "4 job(s) planned" in summary.stdout and "ok 3, skipped 0, failed 1, missing 0" in summary.stdout

    # a seed edited in place, and --seed 8 instead of 7 for the row without one: both run again
    _manifest(root, {1: 11, 2: 99, 3: None}, name="renamed.jsonl", top="\n")
    res = _metis(["enhance", "--manifest", str(root / "renamed.jsonl"), "-o", ".", "--results",
                  "../res.jsonl", "--seed", "8", "--resume", "--json", *FAST], tiny_bundle)  # fmt: skip
    assert f"{root / 'renamed.jsonl'}:4: changed since its recorded success (seed 12 -> 99)" in res.stderr
    assert f"{root / 'renamed.jsonl'}:5: changed since its recorded success (seed 7 -> 8)" in res.stderr
    assert "resume: 1 job(s) done before, 3 to run" in res.stderr
    rerun = [json.loads(line) for line in res.stdout.splitlines()]
    assert {r["output"]: r["seed"] for r in rerun if r["status"] == "ok"} == {"x2.wav": 99, "x3.wav": 8}
    after = _stamps(root / "out")
    assert after["x1.wav"] == stamps["x1.wav"] and after["x2.wav"] != stamps["x2.wav"]
    ok = [r for r in finished(root / "res.jsonl") if r["status"] == "ok"]
    assert ok[-1]["settings"]["decoding"]["steps"] == 2 and ok[-1]["identity"]
    assert ok[-1]["input_identity"]["input"][0] == str((root / "in" / "x3.wav").resolve())

    # other decoding options: a recorded success made with other settings runs again too
    res = _metis(["enhance", "--manifest", str(root / "renamed.jsonl"), "-o", ".", "--results",
                  "../res.jsonl", "--seed", "8", "--resume", "--no-retry-failed", "--steps", "3",
                  "--s2a-steps", "2,2"], tiny_bundle)  # fmt: skip
    assert "changed since its recorded success (options decoding.steps)" in res.stderr
    assert "resume: 0 job(s) done before, 3 to run" in res.stderr

    # a row edited away: its records no longer count in `metis results`
    _manifest(root, {1: 11, 2: 99}, name="renamed.jsonl")
    res = _metis(["enhance", "--manifest", str(root / "renamed.jsonl"), "-o", ".", "--results",
                  "../res.jsonl", "--seed", "8", "--resume", "--no-retry-failed", "--steps", "3",
                  "--s2a-steps", "2,2"], tiny_bundle)  # fmt: skip
    assert "resume: 2 job(s) done before, 0 to run, 1 failed not retried" in res.stderr
    js = json.loads(_metis(["results", "../res.jsonl", "--json"], tiny_bundle).stdout)
    assert (js["total"], js["ok"], js["failed"], js["missing"]) == (3, 2, 1, 0)


def test_a_version_1_ledger_is_refused_on_resume(tiny_bundle, tmp_path, monkeypatch):
    _manifest(tmp_path, {1: 1})
    monkeypatch.chdir(tmp_path)
    old = {**header("se", None, 2, 2, False), "version": 1}
    Path("res.jsonl").write_text(json.dumps(old) + "\n")
    res = _metis(["enhance", "--manifest", "jobs.jsonl", "-o", "out", "--results", "res.jsonl", "--resume",
                  *FAST], tiny_bundle)  # fmt: skip
    assert res.exit_code == 2
    assert "res.jsonl: written by an older metis (ledger version 1" in res.stderr


# ---- metis results ------------------------------------------------------------------------------------


def test_results_refuses_what_is_not_a_ledger(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text(json.dumps({"input": "a.wav"}) + "\n")
    for path, why in (
        (empty, "the file is empty"),
        (manifest, "the file has no metis-results header (a manifest?)"),
    ):
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        res = subprocess.run(
            [*METIS, "results", str(path)], capture_output=True, text=True, env=env, timeout=300
        )
        assert res.returncode == 2 and res.stdout == ""
        assert res.stderr.strip().splitlines() == [f"metis: error: {path}: not a results ledger: {why}"]


def _write(path: Path, shard: Shard | None, keys: list[str], recs: list[dict], run: str = "r1") -> None:
    with Ledger(path) as led:
        led.append(header("se", shard, 5, len(keys), False, keys, run))  # 5 jobs planned in all
        for r in recs:
            led.append(r)


def test_results_counts_what_the_run_planned(tmp_path):
    rec = lambda k, s, **kw: {"key": f"{k}|out/{k}.wav", "status": s, "output": f"out/{k}.wav",  # noqa: E731
                              "origin": f"jobs.jsonl:{k}", "time": 1, **kw}  # fmt: skip
    keys = [f"{k}|out/{k}.wav" for k in ("a", "b", "c", "d", "e")]
    base = tmp_path / "res.jsonl"
    # d failed before a; b is in flight; c and e never started; z is a row edited away since
    _write(base, None, keys, [rec("d", "error", error="d: boom"), rec("a", "error", error="a: boom"),
                              rec("b", "pending"), rec("z", "ok")])  # fmt: skip
    res = CliRunner().invoke(app, ["results", str(base)])
    assert res.exit_code == 1
    assert "5 job(s) planned" in res.stdout and "ok 0, skipped 0, failed 2, missing 3" in res.stdout
    lines = res.stdout.splitlines()
    assert lines.index("  a: boom") < lines.index("  d: boom")  # failures in manifest order
    assert "  jobs.jsonl:b: started, never finished" in lines
    assert "  out/c.wav: not started" in lines and "  out/e.wav: not started" in lines
    assert not any("never recorded" in line for line in lines)

    # two different runs given together: refused
    other = tmp_path / "other.jsonl"
    _write(other, None, keys, [rec("a", "ok")], run="r2")
    res = CliRunner().invoke(app, ["results", str(base), str(other)])
    assert res.exit_code == 2 and "ledgers of different runs" in res.stderr

    # sharded: the keys of each shard interleave back into plan order; a shard without ledger
    s0, s1 = Shard(0, 2), Shard(1, 2)
    sharded = tmp_path / "sh.jsonl"
    _write(
        ledger_path(sharded, s0),
        s0,
        keys[0::2],
        [rec("c", "error", error="c: x"), rec("a", "error", error="a: x")],
    )
    js = json.loads(CliRunner().invoke(app, ["results", str(sharded), "--json"]).stdout)
    assert [f["error"] for f in js["failures"]] == ["a: x", "c: x"]
    assert js["not_started"] == ["out/e.wav"] and js["absent_shards"] == ["1/2"]
    assert (js["unrecorded"], js["missing"]) == (3, 3)  # e, and the 2 items of shard 1
    _write(ledger_path(sharded, s1), s1, keys[1::2], [rec("b", "ok"), rec("d", "ok")])
    js = json.loads(CliRunner().invoke(app, ["results", str(sharded), "--json"]).stdout)
    assert (js["ok"], js["failed"], js["missing"], js["not_started"]) == (2, 2, 1, ["out/e.wav"])


# ---- one owner per shard ------------------------------------------------------------------------------


def test_a_second_process_on_the_same_shard_exits_2_naming_the_first(tiny_bundle, tmp_path):
    _manifest(tmp_path, {1: 1, 2: 2})
    ledger = ledger_path(tmp_path / "res.jsonl", Shard(1, 2))
    owner = ShardLock(ledger).acquire()  # this test process runs shard 1/2
    try:
        base = [*METIS, "enhance", "--manifest", "jobs.jsonl", "-o", "out", "--results", "res.jsonl", *FAST]
        env = subprocess_env(tiny_bundle)
        second = [*base, "--shard", "1/2", "--resume"]
        res = subprocess.run(second, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 2, res.stderr[-2000:]
        host = os.uname().nodename
        assert f"this run (shard) is already running (host {host}, pid {os.getpid()})" in res.stderr
        assert not list(tmp_path.glob("out/*.wav"))  # nothing ran
        # the other shard is free
        res = subprocess.run([*base, "--shard", "0/2"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]
        assert sorted(p.name for p in tmp_path.glob("out/*.wav")) == ["x1.wav", "x2.wav"]
    finally:
        owner.release()


def test_the_kernel_releases_the_lock_of_a_killed_owner(tmp_path):
    ledger = tmp_path / "res.jsonl"
    code = (
        "import os, sys; from metis_cli.runs.ledger import ShardLock; ShardLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); os.kill(os.getpid(), 9)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    res = subprocess.run([sys.executable, "-c", code, str(ledger)], capture_output=True, text=True, env=env,
                         timeout=300)  # fmt: skip
    assert res.returncode == -9 and res.stdout == "locked\n"
    ShardLock(ledger).acquire().release()  # free again


# ---- temporaries ----------------------------------------------------------------------------------------


def test_a_stale_temp_is_removed_even_when_its_folder_has_nothing_left_to_run(
    tiny_bundle, tmp_path, monkeypatch
):
    _manifest(tmp_path, {1: 1})
    monkeypatch.chdir(tmp_path)
    base = ["enhance", "--manifest", "jobs.jsonl", "-o", "out", "--results", "res.jsonl", *FAST]
    assert _metis(base, tiny_bundle).exit_code == 1
    stale = tmp_path / "out" / ".metis-0123456789ab.tmp"  # what a writer SIGKILLed mid-file leaves
    stale.write_bytes(b"RIFF")
    res = _metis([*base, "--resume", "--no-retry-failed"], tiny_bundle, METIS_STALE_TEMP_SECONDS="0")
    assert "resume: 1 job(s) done before, 0 to run" in res.stderr
    assert not stale.exists() and f"removed out/{stale.name}" in res.stderr


# ---- threads --------------------------------------------------------------------------------------------


@pytest.fixture
def torch_threads():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_option_and_default(tiny_bundle, tmp_path, monkeypatch, torch_threads):
    from metis_cli import options

    wav = tmp_path / "a.wav"
    sf.write(wav, speechlike(0.6), 24_000)
    res = _metis(["enhance", str(wav), "-o", str(tmp_path / "o.wav"), "--threads", "1", "--json", *FAST],
                 tiny_bundle)  # fmt: skip
    assert res.exit_code == 0 and json.loads(res.stdout)["threads"] == 1
    cores = len(os.sched_getaffinity(0))
    # two processes of a launcher on this machine: half the cores each (at least one)
    res = _metis(["enhance", str(wav), "-o", str(tmp_path / "p.wav"), "--json", *FAST], tiny_bundle,
                 LOCAL_WORLD_SIZE="2")  # fmt: skip
    assert res.exit_code == 0 and json.loads(res.stdout)["threads"] == max(1, cores // 2)
    assert options.default_threads({"LOCAL_WORLD_SIZE": "4"}, cores=16) == 4
    assert options.default_threads({"SLURM_STEP_TASKS_PER_NODE": "3(x2)"}, cores=16) == 5
    assert options.default_threads({"LOCAL_WORLD_SIZE": "8"}, cores=2) == 1
    assert (
        options.default_threads({}, cores=16) is None
        and options.default_threads({"LOCAL_WORLD_SIZE": "1"}) is None
    )
    res = _metis(["enhance", str(wav), "--threads", "0"], tiny_bundle)
    assert res.exit_code == 2 and "--threads: must be >= 1 (got 0)" in res.stderr
    # the Python API takes the same option
    import torch

    from metis_cli.api import load

    load("se", checkpoint_dir=tiny_bundle, offline=True, threads=1)
    assert torch.get_num_threads() == 1


def test_threads_in_a_real_process(tiny_bundle, tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, speechlike(0.6), 24_000)
    cmd = [*METIS, "enhance", str(wav), "-o", str(tmp_path / "o.wav"), "--json", "--results",
           str(tmp_path / "r.jsonl"), *FAST]  # fmt: skip
    env = subprocess_env(tiny_bundle)
    env.pop("OMP_NUM_THREADS")
    res = subprocess.run([*cmd, "--threads", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["threads"] == 1
    head = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert head["threads"] == 1


def test_a_name_that_is_not_utf8_is_recorded_and_reported_escaped(tiny_bundle, tmp_path):
    """A folder input whose name is not UTF-8 fails alone; the ledger keeps its bytes, and
    `metis results` names it with \\xNN escapes (no UnicodeEncodeError anywhere)."""
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "good.wav", speechlike(0.5), 24_000)
    os.link(tmp_path / "in" / "good.wav", os.path.join(os.fsencode(tmp_path / "in"), b"caf\xe9.wav"))
    env = subprocess_env(tiny_bundle)
    run = [*METIS, "enhance", "in", "-o", "out", "--results", "r.jsonl", "-q", *FAST]
    res = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "caf\\xe9.wav: the file name is not valid UTF-8" in res.stderr
    summary = subprocess.run(
        [*METIS, "results", "r.jsonl"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert summary.returncode == 1 and "Traceback" not in summary.stderr, summary.stderr
    assert "ok 1, skipped 0, failed 1" in summary.stdout
    assert "caf\\xe9.wav: the file name is not valid UTF-8" in summary.stdout

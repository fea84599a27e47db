"""Signals end every `metis` process cleanly (docs/CLI.md "Signals"), through real processes:
SIGHUP, SIGQUIT and SIGTERM exit with 128 + the signal and leave no temporary file, Ctrl-C while
Python still imports the CLI prints one line (no traceback), and a temporary file that a
SIGKILLed writer left is removed by the next run that writes into that folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from metis_cli.media import audio
from tests.conftest import FAST, speechlike

METIS = [sys.executable, "-m", "metis_cli"]  # the console script's module: handlers before imports
LONG = ["--chunk-seconds", "3", "--overlap-seconds", "0.5", "--quiet"]


def env(bundle: Path | None = None) -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    if bundle is not None:
        e["METIS_CHECKPOINT_DIR"] = str(bundle)
    return e


def wav(path: Path, seconds: float, seed: int = 0) -> Path:
    sf.write(path, speechlike(seconds, seed=seed), 24_000)
    return path


def _wait_for_temp(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.time() + 240
    while not list(out.glob(".metis-*.tmp")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)  # polls for the event: the streamed output's temporary file exists
    assert list(out.glob(".metis-*.tmp")), "the long job never started writing"


def _long_job(task: str, tmp_path: Path, out: Path) -> list[str]:
    long = wav(tmp_path / "long.wav", 40.0)
    spk = wav(tmp_path / "spk.wav", 1.0, seed=1)
    args = {"enhance": [str(long)], "tse": [str(long), str(spk)], "vc": [str(long), str(spk)]}[task]
    context = ["--context-seconds", "1"] if task == "enhance" else []
    return [*METIS, task, *args, "-o", str(out / "long.wav"), *LONG, *context, *FAST]


CASES = [
    ("enhance", signal.SIGHUP),
    pytest.param("enhance", signal.SIGQUIT, marks=pytest.mark.slow),
    pytest.param("tse", signal.SIGQUIT, marks=pytest.mark.slow),
    pytest.param("vc", signal.SIGHUP, marks=pytest.mark.slow),
    pytest.param("vc", signal.SIGTERM, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("task", "sig"), CASES)
def test_a_signal_during_a_long_input_exits_128_plus_signal_without_partial_files(
    tiny_bundle, tmp_path, task, sig
):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        _long_job(task, tmp_path, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(tiny_bundle)
    )
    _wait_for_temp(proc, out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert list(out.iterdir()) == []  # no temporary file, no partial output
    assert b"Traceback" not in err


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM, signal.SIGINT])
def test_g2p_ends_on_every_signal_with_its_exit_status_and_no_traceback(sig):
    """`metis g2p` reading stdin lines: the signal arrives while it waits for the next line."""
    proc = subprocess.Popen(
        [*METIS, "g2p", "-l", "en"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(),
    )
    proc.stdin.write(b"hello\n")
    proc.stdin.flush()
    line = proc.stdout.readline()  # the first line was converted: the rest is waiting on stdin
    assert line.startswith(b"en\t"), line
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert b"Traceback" not in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_a_signal_while_python_imports_the_cli_prints_no_traceback(tmp_path, sig):
    """-X importtime reports each finished import on stderr: the signal is sent while the CLI's
    imports are still going on (typer was just imported), or at the latest while `g2p` waits."""
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "metis_cli", "g2p"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(),
    )
    seen = b""
    while proc.poll() is None:
        line = proc.stderr.readline()
        seen += line
        if not line or b"| typer" in line:
            break
    assert b"| typer" in seen, seen[-2000:]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err, err[-3000:]
    if sig == signal.SIGINT:
        assert b"metis: error: interrupted" in err


def test_serve_stops_gracefully_on_sighup(tiny_bundle, tmp_path):
    proc = subprocess.Popen(
        [*METIS, "serve", "--port", "0", "--tasks", "se", "--max-wait-ms", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(tiny_bundle),
    )
    seen = b""
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        line = proc.stderr.readline()
        seen += line
        if b"Uvicorn running on" in line or b"Application startup complete" in line:
            break
    assert b"startup complete" in seen or b"running on" in seen, seen[-2000:]
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (seen + err)[-3000:]
    assert b"Traceback" not in err


def test_a_temp_left_by_sigkill_is_removed_by_the_next_run_into_that_folder(tiny_bundle, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        _long_job("enhance", tmp_path, out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(tiny_bundle),
    )
    _wait_for_temp(proc, out)
    proc.kill()
    proc.communicate(timeout=60)
    left = list(out.glob(".metis-*.tmp"))
    assert len(left) == 1  # SIGKILL cannot be handled: the temporary file stays
    short = wav(tmp_path / "short.wav", 0.6)
    res = subprocess.run(
        [*METIS, "enhance", str(short), "-o", str(out / "short.wav"), *FAST],
        capture_output=True,
        env=env(tiny_bundle),
        timeout=240,
    )
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["short.wav"]


def test_orphan_temps_are_only_those_of_dead_processes_of_this_host(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = audio.temp_name().split(".")[2]
    names = {
        "dead": f".metis-{dead.pid}.{tag}.0123abcd.tmp",
        "live": f".metis-{live.pid}.{tag}.0123abcd.tmp",
        "other_host": f".metis-{dead.pid}.{'0' if tag[0] != '0' else '1'}{tag[1:]}.0123abcd.tmp",
        "old_style": ".metis-0123456789ab.tmp",
        "open": f".metis-{dead.pid}.{tag}.ffffffff.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    with open(tmp_path / names["open"], "rb"):  # a process of this machine has it open
        removed = audio.remove_orphan_temps(tmp_path)
    live.communicate(b"")
    assert [p.name for p in removed] == [names["dead"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for k, n in names.items() if k != "dead")

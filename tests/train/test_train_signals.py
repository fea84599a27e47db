"""Training stops on SIGHUP like on SIGTERM: a checkpoint, exit 129, no traceback (real process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

METIS = [sys.executable, "-m", "metis_cli"]


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


@pytest.mark.slow
def test_finetune_saves_and_exits_129_on_sighup(train_env, tmp_path):
    out = tmp_path / "ft"
    cmd = [*METIS, "finetune", "--task", "tse", "--data", str(train_env["train_tse"]), "--base", "metis-base"]
    cmd += ["--lora-r", "2", "--max-steps", "100000", "--batch-size", "2", "--max-frames", "40"]
    cmd += [
        "--checkpoint-dir",
        str(train_env["bundle"]),
        "--cache-dir",
        str(tmp_path / "c"),
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        log = out / "log.jsonl"
        if log.is_file() and log.read_text().strip():
            break
        time.sleep(0.1)  # polls for the event: the first step was logged
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 129, err[-3000:]
    assert b"SIGHUP: stopped at step" in err and b"Traceback" not in err
    assert (out / "train_state.pt").is_file()

"""Every exit path of a torchrun launch leaves the process group in order (`dist.session`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("dist_exit_script.py")


def _launch(mode: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*cmd, str(SCRIPT), mode], capture_output=True, text=True, env=env, cwd=REPO, timeout=240
    )


@pytest.mark.slow
def test_normal_end_waits_for_every_rank_then_destroys_the_group():
    res = _launch("end")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "terminate called" not in res.stderr
    # rank 1 left the group only after rank 0 finished its work (the exit barrier)
    stamps = {
        ln.split()[1] + ln.split()[2]: float(ln.split()[-1])
        for ln in res.stdout.splitlines()
        if " at " in ln or " until " in ln
    }
    assert stamps["1left"] >= stamps["0busy"], res.stdout
    # inside the session the group is up; after it, destroyed on both ranks
    for rank in (0, 1):
        assert f"rank {rank} left=True initialized=False" in res.stdout, res.stdout


@pytest.mark.slow
def test_an_error_in_one_rank_ends_every_rank_without_waiting_for_the_timeout():
    """Rank 1 fails while rank 0 waits in an all-reduce: rank 1 destroys its group, so rank 0's
    collective fails at once (not after the 6-hour collective timeout) and the launch ends."""
    res = _launch("error")
    assert res.returncode != 0
    assert "planned failure in rank 1" in res.stderr
    assert "terminate called" not in res.stderr and "SIGABRT" not in res.stderr, res.stderr[-3000:]
    assert "[rank0]: RuntimeError" in res.stderr, res.stderr[-3000:]  # its collective failed (peer gone)

"""A 24-job enhancement manifest (22 good inputs of different lengths, 2 bad lines) and helpers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import soundfile as sf

from tests.conftest import FAST, speechlike

N_JOBS = 24
BAD_LINES = (1, 3)  # 1-based manifest lines: a missing input, a line that is not JSON (both shard 0/2)
# every environment variable a launcher might set (cleared for in-process runs)
LAUNCH_VARS = (
    "RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE TORCHELASTIC_RUN_ID MASTER_ADDR MASTER_PORT "
    "SLURM_ARRAY_TASK_ID SLURM_ARRAY_TASK_COUNT SLURM_ARRAY_TASK_MIN SLURM_ARRAY_TASK_MAX "
    "SLURM_ARRAY_TASK_STEP SLURM_PROCID SLURM_NTASKS SLURM_STEP_NUM_TASKS SLURM_LOCALID"
).split()


def write_corpus(root: Path, n_jobs: int = N_JOBS, bad_lines: tuple[int, ...] = BAD_LINES) -> Path:
    """root/in/*.wav and root/jobs.jsonl (paths relative to root); returns the manifest."""
    (root / "in").mkdir(parents=True, exist_ok=True)
    lines = []
    for n in range(1, n_jobs + 1):
        if n == bad_lines[0]:
            lines.append(json.dumps({"input": "in/missing.wav"}))
        elif n in bad_lines[1:]:
            lines.append("{not json")
        else:
            seconds = 0.5 + 0.1 * ((n * 7) % 13)  # 0.5-1.7 s, not sorted
            sf.write(root / "in" / f"x{n:02d}.wav", speechlike(seconds, seed=n), 24_000)
            lines.append(json.dumps({"input": f"in/x{n:02d}.wav", "seed": n}))
    manifest = root / "jobs.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path)


def good_outputs(root: Path, out: str = "out") -> set[str]:
    return {f"{out}/x{n:02d}.wav" for n in range(1, N_JOBS + 1) if n not in BAD_LINES}


def records(path: Path) -> list[dict]:
    """Job records (finished or pending) of one ledger file."""
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "key" in rec:
            out.append(rec)
    return out


def finished(path: Path) -> list[dict]:
    return [r for r in records(path) if r["status"] != "pending"]


def subprocess_env(bundle: Path, **extra: str) -> dict[str, str]:
    """The environment of a metis subprocess: one thread, the tiny bundle, no launcher variables."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        METIS_CHECKPOINT_DIR=str(bundle),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    env.update(extra)
    return env


def cli_env(bundle: Path, **extra: str | None) -> dict[str, str | None]:
    """CliRunner env: the tiny bundle, launcher variables removed (None), `extra` set."""
    env: dict[str, str | None] = {k: None for k in LAUNCH_VARS}
    env["METIS_CHECKPOINT_DIR"] = str(bundle)
    env.update(extra)
    return env


__all__ = ["FAST", "N_JOBS", "BAD_LINES", "records", "finished", "good_outputs", "write_corpus"]

"""The train commands' shell contract: usage errors (exit 2, `metis: error:`) before anything
loads, SIGTERM saves a checkpoint like Ctrl-C (exit 143), a GPU checkpoint resumes on the CPU,
exports get umask permissions, one-GPU-per-task launches pick cuda:0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.serialization as ser
from typer.testing import CliRunner

from metis_cli.cli import app
from metis_cli.errors import InputError
from metis_cli.train.dist import cuda_index

REPO = Path(__file__).resolve().parents[2]
FAST = ["--batch-size", "4", "--lr", "3e-3", "--warmup", "2", "--max-frames", "60", "--save-every", "0"]


def cli(env, *args: str):
    args = [*args, "--checkpoint-dir", str(env["bundle"]), "--cache-dir", str(env["cache"])]
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _finetune(env, out: Path, *extra: str) -> list[str]:
    return [
        *("finetune", "--task", "se", "--data", str(env["train_se"]), "--base", "metis-base"),
        *("--lora-r", "2", *FAST, "--out", str(out), "--quiet", *extra),
    ]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--lr", "-1"], "--lr: must be a finite number > 0 (got -1.0)"),
        (["--lr", "nan"], "--lr: must be a finite number > 0"),
        (["--lr", "0"], "--lr: must be a finite number > 0"),
        (["--epochs", "0"], "--epochs: must be an integer >= 1"),
        (["--max-steps", "0"], "--max-steps: must be an integer >= 1"),
        (["--batch-size", "0"], "--batch-size: must be an integer >= 1"),
        (["--grad-accum", "-2"], "--grad-accum: must be an integer >= 1"),
        (["--warmup", "-1"], "--warmup: must be an integer >= 0"),
        (["--weight-decay", "inf"], "--weight-decay: must be a finite number >= 0"),
        (["--grad-clip", "-1"], "--grad-clip: must be a finite number >= 0"),
        (["--max-frames", "1"], "--max-frames: must be an integer >= 2"),
        (["--seed", "99999999999999999999"], "--seed: must be an integer in 0..9223372036854775807"),
        (["--seed", "-1"], "--seed: must be an integer in 0.."),
        (["--cfg-scale", "1.5"], "--cfg-scale: must be a probability between 0 and 1"),
        (["--cfg-scale", "nan"], "--cfg-scale: must be a finite number >= 0"),
        (["--stop-after", "0"], "--stop-after: must be an integer >= 1"),
        (["--save-every", "-5"], "--save-every: must be an integer >= 0"),
        (["--lora-r", "0"], "--lora-r: must be an integer >= 1"),
        (["--lora-alpha", "-3"], "--lora-alpha: must be a finite number > 0"),
    ],
)
def test_bad_numbers_are_usage_errors_before_anything_loads(tmp_path, args, named):
    # nothing exists: any loading would fail with another message
    cmd = ["finetune", "--task", "se", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]
    cmd += ["--checkpoint-dir", str(tmp_path / "no-bundle"), "--offline", *args]
    res = CliRunner().invoke(app, cmd, catch_exceptions=False)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metis: error: "), res.stderr
    assert named in lines[0]
    assert not (tmp_path / "o").exists()


def test_pretrain_checks_numbers_too(tmp_path):
    res = CliRunner().invoke(
        app,
        ["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--lr", "-1"],
        catch_exceptions=False,
    )
    assert res.exit_code == 2 and res.stderr.startswith("metis: error: --lr: must be")


def test_usage_errors_of_the_run_exit_2_with_the_prefix(train_env, tmp_path):
    missing = cli(
        train_env,
        "finetune",
        "--task",
        "se",
        "--data",
        str(tmp_path / "nope.jsonl"),
        "--out",
        str(tmp_path / "o"),
    )
    assert (
        missing.exit_code == 2
        and missing.stderr.startswith("metis: error: ")
        and "nope.jsonl" in missing.stderr
    )
    res = cli(train_env, *_finetune(train_env, tmp_path / "o2", "--max-steps", "1"))
    assert res.exit_code == 0, res.output
    args = _finetune(train_env, tmp_path / "o3", "--max-steps", "1")
    args[args.index("--base") + 1] = "nope"
    unknown = cli(train_env, *args)
    assert unknown.exit_code == 2 and "metis: error: --base: unknown model 'nope'" in unknown.stderr


def test_exported_weights_get_umask_permissions(train_env, tmp_path):
    old = os.umask(0o022)
    try:
        res = cli(train_env, *_finetune(train_env, tmp_path / "o", "--max-steps", "1"))
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    for name in ("lora.safetensors", "adapter.safetensors", "card.json"):
        assert (tmp_path / "o" / name).stat().st_mode & 0o777 == 0o644, name
    cached = list(Path(train_env["cache"]).glob("*.safetensors"))
    assert cached and all(p.stat().st_mode & 0o777 == 0o644 for p in cached)


def test_a_gpu_checkpoint_resumes_on_the_cpu(train_env, tmp_path):
    """A train_state.pt whose tensors are tagged cuda:0 (as a GPU run writes them) resumes here."""
    out = tmp_path / "o"
    first = cli(train_env, *_finetune(train_env, out, "--max-steps", "4", "--stop-after", "2"))
    assert first.exit_code == 0, first.output
    state = torch.load(out / "train_state.pt", weights_only=True)
    ser.register_package(1, lambda obj: "cuda:0", lambda obj, location: None)
    try:
        torch.save(state, out / "train_state.pt")
    finally:
        ser._package_registry[:] = [p for p in ser._package_registry if p[0] != 1]
    if not torch.cuda.is_available():  # the file really names a GPU
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(out / "train_state.pt", weights_only=True)
    res = cli(train_env, *_finetune(train_env, out, "--max-steps", "4", "--resume"))
    assert res.exit_code == 0, res.output
    steps = [json.loads(ln)["step"] for ln in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("local", "visible", "index"), [(0, 1, 0), (3, 1, 0), (1, 2, 1), (0, 8, 0), (7, 8, 7)]
)
def test_cuda_index_of_a_rank(local, visible, index):
    assert cuda_index(local, visible) == index


def test_cuda_index_refuses_a_rank_past_several_gpus():
    with pytest.raises(InputError, match="LOCAL_RANK 2 but only 2 CUDA device"):
        cuda_index(2, 2)
    with pytest.raises(InputError, match="no CUDA device"):
        cuda_index(0, 0)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_and_resume_continues(train_env, tmp_path, sig):
    out = tmp_path / "o"
    args = _finetune(train_env, out, "--max-steps", "100000", "--epochs", "1")
    args += ["--checkpoint-dir", str(train_env["bundle"]), "--cache-dir", str(train_env["cache"])]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "metis_cli.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    log = out / "log.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"metis: error: {signal.Signals(sig).name}: stopped at step "), err[-2000:]
    assert "Traceback" not in err
    saved = torch.load(out / "train_state.pt", weights_only=True)
    assert saved["step"] >= 2 and (out / "lora.safetensors").is_file()
    assert not list(out.glob("*.tmp"))
    step = saved["step"]
    res = cli(train_env, *_finetune(train_env, out, "--max-steps", str(step + 1), "--resume"))
    assert res.exit_code == 0, res.output
    assert [json.loads(ln)["step"] for ln in log.read_text().splitlines()][-1] == step + 1

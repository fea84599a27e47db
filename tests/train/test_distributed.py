"""Data-parallel training: torchrun + DistributedDataParallel (gloo on CPU) vs one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from metis_cli import api
from metis_cli.cli import app
from metis_cli.nn.stage1 import MetisStage1, Stage1Config
from metis_cli.testing.tiny_bundle import TINY_T2S
from metis_cli.train import loop, objective
from metis_cli.train.data import Item
from metis_cli.train.dist import DistContext, is_main_process
from tests.conftest import FAST_API

REPO = Path(__file__).resolve().parents[2]


def test_rows_split_the_global_batch():
    for n in range(0, 9):
        for world in (1, 2, 3, 4):
            rows = [list(DistContext(r, world).rows(n)) for r in range(world)]
            assert sum(rows, []) == list(range(n))  # every row once, in order
            assert max(map(len, rows)) - min(map(len, rows)) <= 1


def test_rank_losses_average_to_the_single_process_loss():
    """world x (shard CE sum) / global count, averaged over ranks = the global token mean."""
    cfg = Stage1Config.from_dict({**TINY_T2S, "use_phone_cond": False}, "tse", lora_path=False)
    torch.manual_seed(0)
    net = objective.TrainingForward(MetisStage1(cfg))
    torch.nn.init.constant_(net.model.cond_adapter.gate_scale, 0.5)  # adapter gradients too
    gen = torch.Generator().manual_seed(0)
    items = [
        Item(
            torch.randint(0, 32, (12 + b,), generator=gen),
            3,
            torch.randn(12 + b, cfg.cond_dim, generator=gen),
        )
        for b in range(3)
    ]
    batch = loop.collate(items, torch.device("cpu"))

    def loss_and_grads(ctx):
        net.zero_grad()
        loss, ce_sum, count = loop.shard_loss(net, batch, torch.Generator().manual_seed(7), True, 0.15, ctx)
        loss.backward()
        return loss.detach(), ce_sum, count, [p.grad.clone() for p in net.parameters()]

    single, s_sum, s_count, s_grads = loss_and_grads(DistContext(0, 1))
    for world in (2, 3, 4):  # 3 rows: with 4 ranks one rank has none (weight 0)
        ranks = [loss_and_grads(DistContext(r, world)) for r in range(world)]
        assert all(c == s_count for _, _, c, _ in ranks)  # the global count on every rank
        assert sum(r[1] for r in ranks) == pytest.approx(s_sum.item(), rel=1e-5)
        assert (sum(r[0] for r in ranks) / world).item() == pytest.approx(single.item(), rel=1e-5)
        for k, g in enumerate(s_grads):  # what DDP's average gives
            avg = sum(r[3][k] for r in ranks) / world
            assert torch.allclose(avg, g, rtol=1e-4, atol=1e-7), k
    assert len(DistContext(0, 4).rows(3)) == 0
    empty = loss_and_grads(DistContext(0, 4))  # the rank without rows contributes exactly nothing
    assert empty[1] == 0 and all((g == 0).all() for g in empty[3])


def test_rank_detection(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert is_main_process()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()


def test_module_entry_point_runs():
    res = subprocess.run(
        [sys.executable, "-m", "metis_cli.cli", "finetune", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr
    assert "--cfg-scale" in res.stdout and "metis finetune" in res.stdout


def _common(env, cache: Path) -> list[str]:
    return [
        *("finetune", "--task", "tse", "--data", str(env["train_tse"]), "--base", "metis-base"),
        *(
            "--lora-r",
            "2",
            "--max-steps",
            "3",
            "--batch-size",
            "3",
            "--grad-accum",
            "2",
            "--cfg-scale",
            "0.5",
        ),
        *("--lr", "3e-3", "--warmup", "2", "--max-frames", "60", "--save-every", "0"),
        *("--checkpoint-dir", str(env["bundle"]), "--cache-dir", str(cache), "--json"),
    ]


def test_torchrun_two_processes_equal_one_process(train_env, tmp_path):
    """2 gloo processes with DDP train the same model as 1 process with the same global batch.

    10 items, --batch-size 3, --grad-accum 2: micro-batches of 3, 3, 3, 1 rows, so the ranks
    get unequal shares (1 + 2) and, for the last one, none (0 + 1); the prompt dropout (tse,
    cfg 0.5) is drawn for the whole batch on both ranks. Exact equality cannot hold: each rank
    sums its own rows' gradients and DDP adds the two halves, a different float summation
    order than one process's; AdamW then turns those ~1e-7 relative differences of tiny
    gradients (the zero-gated adapter's) into weight differences of about 1e-5 after 3 steps.
    A wrong shard, count or scale changes the weights by about the step size (~1e-3) or the
    logged gradient norms by a factor.
    """
    cache, ddp, one = tmp_path / "cache", tmp_path / "ddp", tmp_path / "one"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "metis_cli.cli", "--verbose", *_common(train_env, cache), "--out", str(ddp)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    # only rank 0 prints the summary; each rank computed the features of half the examples
    # (5 x 3 each), then both read all 30 from the cache; the counts describe the whole group
    summaries = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["steps"] == 3
    assert summaries[0]["features"] == {"cached": 0, "computed": 30}
    assert "rank 0 computed 15 feature(s) of its share" in res.stderr, res.stderr[-3000:]
    assert "rank 1 computed 15 feature(s) of its share" in res.stderr
    assert res.stderr.count("(cache: 0 hits, 30 computed)") == 2
    # one output folder, written once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "ddp"]
    assert sorted(p.name for p in ddp.iterdir()) == [
        "adapter.safetensors",
        "card.json",
        "log.jsonl",
        "lora.safetensors",
        "train_state.pt",
    ]
    assert not list(cache.glob("*.tmp"))
    card = json.loads((ddp / "card.json").read_text())
    assert card["training"]["processes"] == 2
    # the same run in one process (features from the cache)
    one_res = CliRunner().invoke(app, [*_common(train_env, cache), "--out", str(one)], catch_exceptions=False)
    assert one_res.exit_code == 0, one_res.output
    assert json.loads(one_res.stdout)["features"] == {"cached": 30, "computed": 0}
    for f in ("lora.safetensors", "adapter.safetensors"):
        a, b = load_file(str(one / f)), load_file(str(ddp / f))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-4), (f, k, (a[k] - b[k]).abs().max())
    recs = [[json.loads(ln) for ln in (d / "log.jsonl").read_text().splitlines()] for d in (one, ddp)]
    assert [r["step"] for r in recs[1]] == [1, 2, 3]
    for r1, r2 in zip(*recs, strict=True):
        assert r1["lr"] == r2["lr"]
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5)
        assert r2["grad_norm"] == pytest.approx(r1["grad_norm"], rel=1e-4)
    gate = load_file(str(ddp / "adapter.safetensors"))["model.cond_adapter.gate_scale"]
    assert gate.abs().item() > 0  # it trained
    pipe = api.load("tse", model=str(ddp), checkpoint_dir=train_env["bundle"], device="cpu", **FAST_API)
    wav = pipe(train_env["val"] / "noisy/0.wav", train_env["val"] / "prompt/0.wav", seed=0).wav
    assert wav.ndim == 1 and len(wav) > 0


@pytest.mark.slow
def test_torchrun_resume_is_bit_identical(train_env, tmp_path):
    """--stop-after + --resume under torchrun gives the straight 2-process run bit for bit (CPU)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    common = _common(train_env, tmp_path / "cache")
    common[common.index("--max-steps") + 1] = "6"

    def launch(*extra: str) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        res = subprocess.run(
            [*cmd, "-m", "metis_cli.cli", *common, *extra],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr[-3000:]

    launch("--out", str(tmp_path / "straight"))
    launch("--out", str(tmp_path / "split"), "--stop-after", "3")
    launch("--out", str(tmp_path / "split"), "--resume")
    for f in ("lora.safetensors", "adapter.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / f)), load_file(str(tmp_path / "split" / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    logs = [(tmp_path / d / "log.jsonl").read_text() for d in ("straight", "split")]
    assert logs[0] == logs[1] and len(logs[0].splitlines()) == 6

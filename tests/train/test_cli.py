"""`metis finetune` / `metis pretrain` through the real Typer app on the tiny bundle."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from metis_cli import api
from metis_cli.cli import app
from metis_cli.train.loop import effective_warmup, lr_factor
from tests.conftest import FAST_API

FAST = ["--batch-size", "4", "--lr", "3e-3", "--warmup", "2", "--max-frames", "60", "--save-every", "0"]


def cli(env, *args: str):
    args = [*args, "--checkpoint-dir", str(env["bundle"]), "--cache-dir", str(env["cache"])]
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def log_records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_option_form_reports_bad_lines_and_writes_the_log(train_env, tmp_path):
    src = train_env["train"]
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wav file")
    good = [
        json.dumps({"input": str(src / f"noisy/{i}.wav"), "target": str(src / f"clean/{i}.wav")})
        for i in range(5)
    ]
    lines = [
        good[0],
        "{not json",  # line 2
        json.dumps({"input": str(src / "noisy/1.wav")}),  # line 3: no target
        good[1],
        "",
        json.dumps({"input": "missing.wav", "target": str(src / "clean/1.wav")}),  # line 6
        json.dumps({"input": "broken.wav", "target": str(src / "clean/1.wav")}),  # line 7: unreadable
        *good[2:],
    ]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "se-cli"
    res = cli(
        train_env,
        *("finetune", "--task", "se", "--data", str(manifest), "--val", str(train_env["val_se"])),
        *("--base", "metis-base", "--out", str(out), "--lora-r", "2", "--epochs", "2", *FAST, "--json"),
    )
    assert res.exit_code == 0, res.output
    reports = [ln for ln in res.stderr.splitlines() if ln.startswith("skipped")]
    assert len(reports) == 4, res.stderr
    for n, word in ((2, "invalid JSON"), (3, "'target'"), (6, "missing.wav"), (7, "broken.wav")):
        assert any(f"train.jsonl:{n}:" in r and word in r for r in reports), (n, reports)
    summary = json.loads(res.stdout)
    assert summary["skipped"] == 4 and summary["examples"] == 5
    # 5 items, batch 4 -> 2 steps per epoch, 2 epochs
    assert summary["steps"] == summary["total_steps"] == 4
    recs = log_records(out)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert [r["epoch"] for r in recs] == [1, 1, 2, 2]
    for r in recs:
        assert {"step", "epoch", "loss", "lr", "grad_norm"} <= r.keys()
        assert math.isfinite(r["loss"]) and r["grad_norm"] > 0
    # held-out metrics at each epoch's end only
    assert [("val_loss" in r, "val_accuracy" in r) for r in recs] == [(False, False), (True, True)] * 2
    assert summary["held_out"]["accuracy"] == pytest.approx(recs[-1]["val_accuracy"])
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["skipped"] == 4 and card["training"]["lora_r"] == 2
    # the result is a drop-in model that loads strictly
    wav = api.load("se", model=str(out), checkpoint_dir=train_env["bundle"], device="cpu", **FAST_API)(
        src / "noisy/0.wav", seed=0
    ).wav
    assert wav.ndim == 1 and len(wav) > 0


def test_resume_through_the_cli_is_bit_identical(train_env, tmp_path):
    common = ["finetune", "--task", "se", "--data", str(train_env["train_se"]), "--base", "metis-base"]
    common += ["--lora-r", "2", "--max-steps", "8", "--grad-accum", "2", *FAST, "--quiet"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert cli(train_env, *common, "--out", str(straight)).exit_code == 0
    first = cli(train_env, *common, "--out", str(split), "--stop-after", "3")
    assert first.exit_code == 0, first.output
    assert len(log_records(split)) == 3
    again = cli(train_env, *common, "--out", str(split))
    assert again.exit_code == 2 and again.stderr.startswith("metis: error: ") and "--resume" in again.stderr
    res = cli(train_env, *common, "--out", str(split), "--resume")
    assert res.exit_code == 0, res.output
    for f in ("lora.safetensors", "adapter.safetensors"):
        a, b = load_file(str(straight / f)), load_file(str(split / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    assert log_records(split) == log_records(straight)  # same losses, rates and norms, step by step
    # a finished run extended with a larger --max-steps continues (schedule re-planned)
    more = cli(train_env, *common[:-1], "--out", str(split), "--resume", "--max-steps", "10", "--quiet")
    assert more.exit_code == 0, more.output
    recs = log_records(split)
    assert [r["step"] for r in recs] == list(range(1, 11))
    assert recs[8]["lr"] == pytest.approx(3e-3 * lr_factor(8, 10, effective_warmup(2, 10)))
    # the run's start model is fixed
    rank4 = [("4" if a == "2" and common[i - 1] == "--lora-r" else a) for i, a in enumerate(common)]
    other = cli(train_env, *rank4, "--out", str(split), "--resume", "--base", "metis-se")
    assert other.exit_code == 2 and "started with" in other.stderr


def test_cosine_schedule_values():
    total, warm = 110, 10
    assert lr_factor(0, total, warm) == pytest.approx(0.1)
    assert lr_factor(9, total, warm) == pytest.approx(1.0)
    assert lr_factor(10, total, warm) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_factor(60, total, warm) == pytest.approx(0.5)  # half-way through the decay
    assert lr_factor(35, total, warm) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_factor(109, total, warm) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    values = [lr_factor(s, total, warm) for s in range(warm, total)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))  # strictly decreasing
    assert effective_warmup(100, 50) == 5 and effective_warmup(3, 1000) == 3 and effective_warmup(100, 5) == 1


def test_logged_rates_follow_the_schedule(train_env, tmp_path):
    out = tmp_path / "sched"
    res = cli(
        train_env,
        *("finetune", "--task", "se", "--data", str(train_env["train_se"]), "--out", str(out)),
        *("--base", "metis-base", "--lora-r", "2", "--max-steps", "20", *FAST, "--quiet"),
    )
    assert res.exit_code == 0, res.output
    lrs = [r["lr"] for r in log_records(out)]
    assert lrs == pytest.approx([3e-3 * lr_factor(s, 20, 2) for s in range(20)])
    assert lrs[1] == pytest.approx(3e-3) and lrs[-1] < 1e-4


@pytest.mark.parametrize(
    "task,base,start,rank,alpha",
    [
        ("tse", [], "metis-tse-lora32", 4, 8),  # default: continues the released LoRA (tiny: r4 a8)
        ("tse", ["--base", "metis-base"], "metis-base", 32, 64),  # fresh LoRA: the released values
        ("vc", ["--base", "metis-base"], "metis-base", 16, 32),
    ],
)
def test_tse_and_vc_finetune_load_strictly(train_env, tmp_path, task, base, start, rank, alpha):
    out = tmp_path / task
    res = cli(
        train_env,
        *("finetune", "--task", task, "--data", str(train_env[f"train_{task}"]), "--out", str(out), *base),
        *("--val", str(train_env[f"val_{task}"]), "--max-steps", "3", *FAST, "--json", "--quiet"),
    )
    assert res.exit_code == 0, res.output
    card = json.loads((out / "card.json").read_text())
    assert card["task"] == task and card["stage1"] == {"layout": "lora", "ft_type": task}
    lora = load_file(str(out / "lora.safetensors"))
    assert lora["model.diff_estimator.layers.0.self_attn.q_proj.lora_A.default.weight"].shape[0] == rank
    assert card["training"]["lora_alpha"] == alpha and card["training"]["start"] == start
    pipe = api.load(task, model=str(out), checkpoint_dir=train_env["bundle"], device="cpu", **FAST_API)
    wav = pipe(train_env["val"] / "noisy/0.wav", train_env["val"] / "prompt/0.wav", seed=0).wav
    assert wav.ndim == 1 and len(wav) > 0
    assert json.loads(res.stdout)["held_out"]["tokens"] > 0


def test_tts_finetune_on_phones_writes_a_merged_model(train_env, tmp_path):
    out = tmp_path / "tts"
    res = cli(
        train_env,
        *("finetune", "--task", "tts", "--data", str(train_env["train_tts"]), "--out", str(out)),
        *("--lora-r", "2", "--max-steps", "3", *FAST, "--quiet"),
    )
    assert res.exit_code == 0, res.output
    card = json.loads((out / "card.json").read_text())
    assert (
        card["stage1"] == {"layout": "full", "ft_type": "tts"} and card["training"]["start"] == "maskgct-t2s"
    )
    state = load_file(str(out / "stage1.safetensors"))
    assert "phone_emb.weight" in state and not any("lora" in k for k in state)
    base = load_file(str(train_env["bundle"] / "amphion/MaskGCT/t2s_model/model.safetensors"))
    assert state.keys() == base.keys()
    q = "diff_estimator.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(state[q], base[q])  # the trained LoRA is merged in
    assert torch.equal(state["cond_emb.weight"], base["cond_emb.weight"])  # frozen
    pipe = api.load("tts", model=str(out), checkpoint_dir=train_env["bundle"], device="cpu", **FAST_API)
    wav = pipe(
        train_env["val"] / "clean/0.wav",
        text="a falling tone",
        prompt_text="a rising tone",
        language="en",
        prompt_language="en",
        seed=0,
    ).wav
    assert wav.ndim == 1 and len(wav) > 0


def test_unknown_task_is_a_clear_error(train_env, tmp_path):
    manifest = tmp_path / "omni.jsonl"
    manifest.write_text(json.dumps({"video": "a.mp4", "target": "a.wav"}) + "\n")
    res = cli(train_env, "finetune", "--task", "omni", "--data", str(manifest), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and res.stderr.startswith("metis: error: --task")
    assert "se, tse, vc, tts, l2s, not 'omni'" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_pretrain_from_a_config_and_from_base(train_env, tmp_path):
    listing = tmp_path / "audio.txt"
    listing.write_text("\n".join(str(p) for p in sorted((train_env["train"] / "clean").glob("*.wav"))) + "\n")
    overrides = json.loads((train_env["bundle"] / "metis_config_overrides.json").read_text())
    block = next(v["t2s_model"] for k, v in overrides.items() if "t2s_model" in v and k == "metis-base")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": {"t2s_model": block}}))
    out = tmp_path / "scratch"
    res = cli(
        train_env,
        *("pretrain", "--data", str(listing), "--out", str(out), "--config", str(cfg)),
        *("--max-steps", "40", *FAST, "--json", "--quiet"),
    )
    assert res.exit_code == 0, res.output
    new = load_file(str(out / "model.safetensors"))
    base = load_file(str(train_env["bundle"] / "amphion/metis/metis_base/model.safetensors"))
    assert new.keys() == base.keys()
    assert not torch.equal(new["cond_emb.weight"], base["cond_emb.weight"])  # not the base weights
    loss = [r["loss"] for r in log_records(out)]
    assert np.mean(loss[-8:]) < np.mean(loss[:8]) - 0.2
    assert "scratch" in json.loads((out / "card.json").read_text())["description"]
    cont = tmp_path / "continued"
    res = cli(
        train_env,
        *("pretrain", "--data", str(listing), "--out", str(cont), "--base", "metis-base"),
        *("--max-steps", "2", *FAST, "--quiet"),
    )
    assert res.exit_code == 0, res.output
    assert (cont / "model.safetensors").is_file()
    shutil.rmtree(out)


@pytest.mark.slow
def test_example_script_runs(tmp_path):
    """examples/finetune_se.sh end to end (about 2 minutes on CPU)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "finetune_se.sh"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    res = subprocess.run(["bash", str(script), str(tmp_path)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "enhanced" / "0.wav").is_file()
    assert [r["step"] for r in log_records(tmp_path / "se-ft")] == list(range(1, 101))

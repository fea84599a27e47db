"""Fine-tuning and pre-training on the tiny bundle with synthesised data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from metis_cli import api
from metis_cli.errors import InputError, MetisError
from metis_cli.testing.tiny_bundle import SEMANTIC_VOCAB
from metis_cli.train import finetune, pretrain
from metis_cli.train.loop import TrainOptions

OPTS = dict(batch_size=4, lr=3e-3, warmup=10, max_frames=60, save_every=0)


def steps(n: int, **kw) -> TrainOptions:
    return TrainOptions(max_steps=n, **OPTS, **kw)


@pytest.fixture(scope="module")
def tuned(train_env):
    out = train_env["root"] / "se-ft"
    res = finetune(
        "se",
        train_env["train_se"],
        out,
        val=train_env["val_se"],
        checkpoint_dir=train_env["bundle"],
        cache_dir=train_env["cache"],
        options=steps(150),
    )
    return res


def test_finetune_learns(tuned):
    loss = tuned.history.loss
    assert len(loss) == 150
    assert np.mean(loss[-20:]) < np.mean(loss[:20]) - 0.3
    chance = 1 / SEMANTIC_VOCAB
    assert tuned.final_eval["accuracy"] > tuned.start_eval["accuracy"] + 0.08
    assert tuned.final_eval["accuracy"] > 3 * chance
    assert tuned.final_eval["loss"] < tuned.start_eval["loss"]


def test_files_use_official_naming(tuned):
    lora = load_file(str(tuned.out / "lora.safetensors"))
    adapter = load_file(str(tuned.out / "adapter.safetensors"))
    assert "model.diff_estimator.layers.0.self_attn.q_proj.lora_A.default.weight" in lora
    assert len(lora) == 2 * 7 * 2  # 2 layers x 7 projections x (A, B)
    assert set(adapter) == {
        f"model.cond_adapter.{k}"
        for k in ("in_linear.weight", "in_linear.bias", "out_linear.weight", "out_linear.bias", "gate_scale")
    }


def test_tuned_model_loads_strictly_and_changes_enhance(tuned, train_env):
    noisy = train_env["val"] / "noisy" / "0.wav"
    kw = dict(
        checkpoint_dir=train_env["bundle"],
        device="cpu",
        steps=4,
        s2a_steps_1layer=(2,),
        s2a_steps_full=(2,) + (1,) * 11,
    )
    base = api.load("se", **kw)(noisy, seed=0).wav
    tuned_wav = api.load("se", model=str(tuned.out), **kw)(noisy, seed=0).wav
    again = api.load("se", model=str(tuned.out), **kw)(noisy, seed=0).wav
    assert np.array_equal(tuned_wav, again)
    assert not np.array_equal(base, tuned_wav)
    # the loader is strict: a renamed LoRA key is refused, naming the file
    bad = tuned.out.parent / "se-bad"
    bad.mkdir()
    for f in ("card.json", "adapter.safetensors"):
        (bad / f).write_bytes((tuned.out / f).read_bytes())
    lora = load_file(str(tuned.out / "lora.safetensors"))
    k = next(iter(lora))
    lora[k.replace("_proj", "_prj")] = lora.pop(k)
    save_file(lora, str(bad / "lora.safetensors"))
    with pytest.raises(MetisError, match="lora.safetensors.*missing key"):
        api.load("se", model=str(bad), **kw)(noisy, seed=0)


@pytest.mark.parametrize("task,cfg", [("se", None), ("tse", 0.5)])  # tse: prompt dropout draws too
def test_resume_is_bit_identical(train_env, task, cfg):
    kw = dict(checkpoint_dir=train_env["bundle"], cache_dir=train_env["cache"], base="metis-base", lora_r=2)
    data = train_env[f"train_{task}"]
    straight = train_env["root"] / f"straight-{task}"
    finetune(task, data, straight, options=steps(12, cfg_scale=cfg), **kw)
    split = train_env["root"] / f"split-{task}"
    finetune(task, data, split, options=steps(12, stop_after=6, cfg_scale=cfg), **kw)
    with pytest.raises(InputError, match="--resume"):
        finetune(task, data, split, options=steps(12, cfg_scale=cfg), **kw)
    res = finetune(task, data, split, options=steps(12, cfg_scale=cfg), resume=True, **kw)
    assert len(res.history.loss) == 12
    assert res.cache_misses == 0  # every feature came from the cache
    for f in ("lora.safetensors", "adapter.safetensors"):
        a, b = load_file(str(straight / f)), load_file(str(split / f))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f
    gate = load_file(str(split / "adapter.safetensors"))["model.cond_adapter.gate_scale"]
    assert gate.abs().item() > 0  # the zero-initialised gate has moved


def test_full_finetune_from_base_loads(train_env):
    out = train_env["root"] / "se-full"
    finetune(
        "se",
        train_env["train_se"],
        out,
        base="metis-base",
        full=True,
        checkpoint_dir=train_env["bundle"],
        cache_dir=train_env["cache"],
        options=steps(3),
    )
    state = load_file(str(out / "stage1.safetensors"))
    assert "cond_adapter.gate_scale" in state and not any("lora" in k for k in state)
    wav = api.load(
        "se",
        model=str(out),
        checkpoint_dir=train_env["bundle"],
        device="cpu",
        steps=2,
        s2a_steps_1layer=(1,),
        s2a_steps_full=(1,) * 12,
    )(train_env["val"] / "noisy" / "1.wav", seed=0).wav
    assert wav.ndim == 1 and len(wav) > 0


def test_pretrain_lowers_loss_and_feeds_finetune(train_env):
    out = train_env["root"] / "pre"
    res = pretrain(
        train_env["train"] / "clean",
        out,
        checkpoint_dir=train_env["bundle"],
        cache_dir=train_env["cache"],
        options=steps(80),
    )
    assert np.mean(res.history.loss[-15:]) < np.mean(res.history.loss[:15]) - 0.2
    base = load_file(str(train_env["bundle"] / "amphion/metis/metis_base/model.safetensors"))
    new = load_file(str(out / "model.safetensors"))
    assert new.keys() == base.keys()
    ft = finetune(
        "se",
        train_env["train_se"],
        train_env["root"] / "from-pre",
        base=str(out),
        lora_r=2,
        checkpoint_dir=train_env["bundle"],
        cache_dir=train_env["cache"],
        options=steps(2),
    )
    assert (ft.out / "base.safetensors").is_file()  # the local base travels with the model

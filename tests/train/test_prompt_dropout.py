"""CFG prompt dropout of explicit prompts (tse enrolment, vc reference): spec §6.3 / §6.4 step 3."""

from __future__ import annotations

import json

import pytest
import torch

from metis_cli.train import finetune, loop
from metis_cli.train.data import Item
from metis_cli.train.loop import TrainOptions, collate, drop_prompts


def prompted_items(seed: int = 0, n: int = 5, dim: int = 3) -> list[Item]:
    gen = torch.Generator().manual_seed(seed)
    items = []
    for b in range(n):
        total, plen = 20 + 3 * b, 4 + b
        x0 = torch.randint(0, 32, (total,), generator=gen)
        items.append(Item(x0, plen, torch.randn(total, dim, generator=gen)))
    return items


def decisions(seed: int, batches: int, cfg_scale: float) -> list[bool]:
    gen = torch.Generator().manual_seed(seed)
    items = prompted_items()
    return [drop_prompts(items, gen, cfg_scale)[1] for _ in range(batches)]


def test_one_draw_per_batch_at_the_configured_rate():
    first = decisions(seed=3, batches=4000, cfg_scale=0.15)
    assert first == decisions(seed=3, batches=4000, cfg_scale=0.15)  # deterministic given the seed
    assert first != decisions(seed=4, batches=4000, cfg_scale=0.15)
    rate = sum(first) / len(first)
    assert abs(rate - 0.15) < 0.025, rate  # 4000 Bernoulli(0.15): sd 0.0056
    assert abs(sum(decisions(5, 4000, 0.5)) / 4000 - 0.5) < 0.04
    assert not any(decisions(5, 200, 0.0)) and all(decisions(5, 200, 1.0))
    # exactly one uniform per batch: the generator advances like one torch.rand(1)
    gen, ref = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    for _ in range(7):
        drop_prompts(prompted_items(), gen, 0.15)
        torch.rand(1, generator=ref)
    assert torch.equal(gen.get_state(), ref.get_state())


def test_a_dropped_batch_is_the_target_part_only():
    items = prompted_items()
    cut, dropped = drop_prompts(items, torch.Generator().manual_seed(0), cfg_scale=1.0)
    assert dropped
    for it, c in zip(items, cut, strict=True):
        assert c.prompt_len == 0
        assert torch.equal(c.x0, it.x0[it.prompt_len :])
        assert torch.equal(c.cond, it.cond[it.prompt_len :])  # F[Lp:], the unconditional branch's
    batch = collate(cut, torch.device("cpu"))
    targets = [len(it) - it.prompt_len for it in items]
    assert torch.equal(batch.prompt_len, torch.zeros(len(items), dtype=torch.long))
    assert batch.x0.shape == (len(items), max(targets)) and batch.cond.shape[:2] == batch.x0.shape
    assert batch.keep.sum(dim=1).tolist() == targets
    assert torch.equal(batch.cond[0, : targets[0]], items[0].cond[items[0].prompt_len :])
    # a kept batch is untouched
    kept, dropped = drop_prompts(items, torch.Generator().manual_seed(0), cfg_scale=0.0)
    assert not dropped and all(a is b for a, b in zip(kept, items, strict=True))


def test_no_prompt_no_draw():
    """se items have no prompt: nothing is drawn and nothing changes."""
    items = [Item(it.x0, 0, it.cond) for it in prompted_items()]
    gen = torch.Generator().manual_seed(1)
    before = gen.get_state()
    out, dropped = drop_prompts(items, gen, cfg_scale=1.0)
    assert not dropped and out == items and torch.equal(gen.get_state(), before)


@pytest.mark.parametrize("cfg_scale,expect", [(None, 0.15), (0.5, 0.5)])
def test_training_drops_prompts_with_the_configs_rate(train_env, tmp_path, monkeypatch, cfg_scale, expect):
    """The loop feeds dropped micro-batches (no prompt, condition of target length) to the model."""
    seen = []
    real = loop.drop_prompts

    def spy(items, gen, scale):
        out, dropped = real(items, gen, scale)
        seen.append(
            (scale, dropped, collate(out, torch.device("cpu")), [len(it) - it.prompt_len for it in items])
        )
        return out, dropped

    monkeypatch.setattr(loop, "drop_prompts", spy)
    out = tmp_path / "tse"
    opts = TrainOptions(
        max_steps=12, batch_size=4, lr=3e-3, warmup=2, max_frames=500, save_every=0, cfg_scale=cfg_scale
    )
    finetune(
        "tse",
        train_env["train_tse"],
        out,
        base="metis-base",
        lora_r=2,
        checkpoint_dir=train_env["bundle"],
        cache_dir=train_env["cache"],
        options=opts,
    )
    assert len(seen) == 12 and all(s == expect for s, *_ in seen)  # one draw per micro-batch
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["options"]["cfg_scale"] == expect  # the config's t2s_model.cfg_scale
    for _, dropped, batch, targets in seen:
        if dropped:
            assert (batch.prompt_len == 0).all()
            assert batch.keep.sum(dim=1).tolist() == targets and batch.cond.shape[1] == batch.x0.shape[1]
        else:
            assert (batch.prompt_len > 0).all()
    if cfg_scale == 0.5:  # 12 fair coins (seed 0): both kinds of batch occur
        assert 0 < sum(d for _, d, *_ in seen) < 12

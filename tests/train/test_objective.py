"""The training forward: draws in the official order (golden `fw` cases), masks, loss."""

from __future__ import annotations

import math
import re

import pytest
import torch

from metis_cli.train import objective
from tests.golden.cases import all_cases

FW_CASES = [
    c
    for c in all_cases()
    if (c.kind.startswith(("t2s_", "metis_"))) and "fw" in c.meta.get("calls", {}) and "mid.fw_mask" in c.io
]


def _cfg_scale(case) -> float:
    block = case.config.get("model", {}).get("t2s_model") or case.config.get("t2s_model") or {}
    return float(block.get("cfg_scale", 0.15))


@pytest.mark.parametrize("case", FW_CASES, ids=str)
def test_draws_redraw_the_official_masks(case):
    """Seeded like the official call, the generator redraws t, prompt lengths and the mask."""
    seed = int(re.search(r"manual_seed\((\d+)\)", str(case.call("fw")))[1])
    x0 = case.io["in.fw_x0"]
    given = case.io.get("in.fw_prompt_len")
    draws = objective.draw_forward(
        torch.Generator().manual_seed(seed), x0.shape[0], x0.shape[1], given, _cfg_scale(case)
    )
    assert torch.equal(draws.t, case.io["mid.fw_t"])
    assert torch.equal(draws.mask, case.io["mid.fw_mask"][..., 0])
    expected_plen = case.io["out.fw_prompt_len"] if given is None else given
    assert torch.equal(draws.prompt_len, expected_plen)
    assert torch.allclose(draws.mask_prob, case.io["out.fw_mask_prob"], atol=1e-6)


def test_golden_cases_found():
    assert FW_CASES, "no stage-1 golden case with an fw run"


def test_mask_rules():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        plen = torch.randint(0, 10, (6,), generator=gen)
        d = objective.draw_forward(gen, 6, 12, plen)
        for b in range(6):
            assert d.mask[b, : plen[b]].sum() == 0  # the prompt is never masked
            assert d.mask[b].sum() >= 1  # at least one masked frame
        assert ((d.t >= 1e-5) & (d.t <= 1)).all()
        assert torch.all(d.mask_prob >= 0.2)
    # masking ratio follows max(sin(pi t / 2), 0.2): a large batch at fixed lengths
    d = objective.draw_forward(
        torch.Generator().manual_seed(1), 4000, 64, torch.zeros(4000, dtype=torch.long)
    )
    lo = d.t < 0.1
    assert abs(d.mask[lo].mean().item() - 0.2) < 0.02
    hi = d.t > 0.95
    assert d.mask[hi].mean().item() > math.sin(0.95 * math.pi / 2) - 0.02


def test_masked_ce_and_hits_count_only_masked_positions():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = 10.0  # right at position 0
    logits[0, 1, 1] = 10.0  # wrong at position 1 (target 3)
    x0 = torch.tensor([[2, 3, 0]])
    w = torch.tensor([[1.0, 1.0, 0.0]])
    assert objective.masked_hits(logits, x0, w) == (1, 2)
    only_right = objective.masked_ce(logits, x0, torch.tensor([[1.0, 0.0, 0.0]]))
    assert only_right.item() < 1e-3
    assert objective.masked_ce(logits, x0, w).item() > 4.0

"""Golden tests of stage 1: t2s_phone, t2s_nophone, metis_full_<task> (golden README)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metis_cli.core.decoding import ReplayNoise, TorchNoise, stage1_generate, stage1_reference

from .cases import all_cases, assert_golden_close, float64_eval
from .generator_helpers import (
    check_stage1_fw,
    decode_options,
    is_stage1_kind,
    load_stage1,
    output_name,
    run_stage1_replay,
    stage1_ft_type,
    stage1_rd_inputs,
    stage1_runs,
    unknown_outputs,
)

CASES = [c for c in all_cases() if is_stage1_kind(c.kind)]
RUNS = [(c, r) for c in CASES for r in stage1_runs(c)]
FW_OUT = {"out.fw_logits", "out.fw_final_mask", "out.fw_prompt_len", "out.fw_mask_prob"}


def model_of(case):
    return load_stage1(case.path, case.kind, stage1_ft_type(case))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_output_is_checked(case):
    known = FW_OUT | ({"out.bb_logits"} if "in.bb_x" in case.io else set())
    assert not unknown_outputs(case, known, stage1_runs(case))


@pytest.mark.parametrize("case", [c for c in CASES if "in.bb_x" in c.io], ids=str)
def test_backbone(case):
    io, model = case.io, model_of(case)
    ph_ids, ph_keep = io.get("in.bb_phone_id"), io.get("in.bb_phone_mask")
    args = (io["in.bb_x"], io["in.bb_t"], io["in.bb_x_mask"], ph_ids, ph_keep)

    def backbone(m, x, t, keep, ph_ids, ph_keep):
        return m.diff_estimator(x, t, keep, None if ph_ids is None else m.phone_emb(ph_ids), ph_keep)

    with torch.no_grad():
        emb = backbone(model, *args)
        exact = float64_eval(model, *args, fn=backbone)
        assert_golden_close(emb, io["mid.bb_embeds"], exact, f"{case.kind} mid.bb_embeds")
        exact = float64_eval(model, *args, fn=lambda m, *a: m.to_logit(backbone(m, *a)))
        assert_golden_close(model.to_logit(emb), io["out.bb_logits"], exact, f"{case.kind} out.bb_logits")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward(case):
    check_stage1_fw(model_of(case), case)


@pytest.mark.parametrize("case,run", RUNS, ids=lambda x: x if isinstance(x, str) else str(x))
def test_replay(case, run):
    model = model_of(case)
    passes = model.diff_estimator.passes
    run_stage1_replay(model, case, run)
    assert model.diff_estimator.passes > passes  # the pass counter moves


@pytest.mark.parametrize("case,run", RUNS, ids=lambda x: x if isinstance(x, str) else str(x))
def test_reference_loop_replay(case, run):
    """The written-out batch-1 loop (sampling.stage1_reference) gives the golden tokens."""
    model, call = model_of(case), case.call(run)
    x = stage1_rd_inputs(case, run)
    noise = ReplayNoise.from_file(case.path / call["noise_file"])
    out = stage1_reference(
        model, x["prompt"], x["target_len"], x["phones"], x["cond"], decode_options(call), noise
    )
    expected = case.io[output_name(call)][0]
    if expected.shape[0] != x["target_len"]:
        out = torch.cat([x["prompt"], out])
    assert torch.equal(out, expected)
    assert noise.consumed


@pytest.mark.parametrize("case,run", RUNS, ids=lambda x: x if isinstance(x, str) else str(x))
@pytest.mark.parametrize("mode", ["fused_cfg", "static_shapes", "sdpa"])
def test_replay_fast_modes(case, run, mode):
    """Fast modes change floats by ~1e-6 (static shapes: not at all at batch 1); the tiny goldens
    keep identical tokens (spec §12)."""
    model = model_of(case)
    opts = decode_options(case.call(run))
    if mode != "sdpa":
        run_stage1_replay(model, case, run, dataclasses.replace(opts, **{mode: True}))
    else:
        model.diff_estimator.attn_impl = "sdpa"
        try:
            run_stage1_replay(model, case, run)
        finally:
            model.diff_estimator.attn_impl = "eager"


def _other_item(x: dict) -> dict:
    """A second, shorter item built from a golden run's inputs."""
    lp = max(x["prompt"].shape[0] - 2, 0)
    n = x["target_len"] - 3
    return {
        "prompt": x["prompt"][:lp],
        "phones": None if x["phones"] is None else x["phones"][:-1],
        "cond": None if x["cond"] is None else x["cond"][: lp + n] * 0.5,
        "target_len": n,
    }


@pytest.mark.parametrize("case,run", RUNS, ids=lambda x: x if isinstance(x, str) else str(x))
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_batched_replay(case, run, fused, static):
    """The golden item batched with another: golden tokens, all noise consumed, and the other
    item equals its own B=1 run with an equally seeded generator (also with static shapes,
    where the shorter item rides along as padding after it finished)."""
    model = model_of(case)
    call = case.call(run)
    opts = dataclasses.replace(decode_options(call), fused_cfg=fused, static_shapes=static)
    a = stage1_rd_inputs(case, run)
    b = _other_item(a)
    items = [b, a]  # the golden item second: its positions must not depend on the first
    noise_a = ReplayNoise.from_file(case.path / call["noise_file"])

    def gen(items, noises):
        return stage1_generate(
            model,
            [x["prompt"] for x in items],
            [x["target_len"] for x in items],
            None if a["phones"] is None else [x["phones"] for x in items],
            None if a["cond"] is None else [x["cond"] for x in items],
            opts,
            noises,
        )

    nb = TorchNoise(torch.Generator().manual_seed(7))
    out_b, out_a = gen(items, [nb, noise_a])
    expected = case.io[output_name(call)][0]
    if expected.shape[0] != a["target_len"]:
        out_a = torch.cat([a["prompt"], out_a])
    assert torch.equal(out_a, expected)
    assert noise_a.consumed
    alone = TorchNoise(torch.Generator().manual_seed(7))
    (ref_b,) = gen([b], [alone])
    assert torch.equal(out_b, ref_b)
    assert alone.draws == nb.draws


@pytest.mark.parametrize("case", [c for c in CASES if "in.rd_finetune_cond" in c.io][:1], ids=str)
def test_missing_adapter_input_rejected(case):
    """A finetune condition whose length is not prompt + target is an input error."""
    from metis_cli.errors import InputError

    model, x = model_of(case), stage1_rd_inputs(case, "rd")
    with pytest.raises(InputError):
        stage1_generate(
            model,
            [x["prompt"]],
            [x["target_len"] + 1],
            None,
            [x["cond"]],
            decode_options(case.call("rd")),
            [TorchNoise()],
        )

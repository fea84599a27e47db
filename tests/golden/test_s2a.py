"""Golden tests of the S2A models: s2a_1layer, s2a_full (golden README)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metis_cli.core.decoding import (
    ReplayNoise,
    TorchNoise,
    metis_semantic_to_acoustic,
    s2a_generate,
    s2a_reference,
)

from .cases import all_cases, assert_close, assert_golden_close, float64_eval
from .generator_helpers import check_fw_draws, decode_options, load_s2a, output_name, unknown_outputs

CASES = [c for c in all_cases() if c.kind in ("s2a_1layer", "s2a_full")]
BB_HEAD = {"s2a_1layer": 0, "s2a_full": 3}  # fixed wiring of the bb call per kind
HANDLED_RUNS = ("rd", "pipe")
KNOWN = {
    "out.bb_logits",
    "out.fw_logits",
    "out.fw_mask_layer",
    "out.fw_final_mask",
    "out.fw_prompt_len",
    "out.fw_mask_prob",
}


def runs(case) -> list[str]:
    return [r for r in HANDLED_RUNS if r in case.meta["calls"]]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_output_is_checked(case):
    assert not unknown_outputs(case, KNOWN, runs(case))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_backbone(case):
    io, model = case.io, load_s2a(case.path)
    args = (io["in.bb_x"], io["in.bb_t"], io["in.bb_cond"], io["in.bb_x_mask"])
    head = BB_HEAD[case.kind]
    with torch.no_grad():
        emb = model.diff_estimator(*args)
        exact = float64_eval(model, *args, fn=lambda m, *a: m.diff_estimator(*a))
        assert_golden_close(emb, io["mid.bb_embeds"], exact, f"{case.kind} mid.bb_embeds")
        logits = model.to_logits[head](emb)
        exact = float64_eval(model, *args, fn=lambda m, *a: m.to_logits[head](m.diff_estimator(*a)))
        assert_golden_close(logits, io["out.bb_logits"], exact, f"{case.kind} out.bb_logits")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward(case):
    io, model = case.io, load_s2a(case.path)
    Q = model.num_quantizer
    ml = int(io["out.fw_mask_layer"][0])
    assert 0 <= ml < Q
    x0, mask = io["in.fw_x0"], io["mid.fw_mask"]  # (B, T, Q), (B, T, 1)
    plen = io["out.fw_prompt_len"]
    is_prompt = (torch.arange(x0.shape[1])[None, :] < plen[:, None]).float()[..., None]  # (B, T, 1)
    mtok = model.mask_emb.weight[0]
    with torch.no_grad():
        xt = torch.zeros(*x0.shape[:2], model.cfg.hidden_size)
        for layer in range(Q):
            emb = model.token_emb[layer](x0[..., layer])
            if layer < ml:
                xt = xt + emb
            elif layer == ml:
                xt = xt + (mask * mtok + (1 - mask) * emb)
            else:
                xt = xt + (emb * is_prompt + mtok * (1 - is_prompt))
        assert_close(xt, io["mid.fw_xt"], what="mid.fw_xt")
        args = (io["mid.fw_xt"], io["mid.fw_t"], io["in.fw_cond_code"], io["in.bb_x_mask"])

        def forward(m, xt, t, code, keep):
            return m(xt, t, m.layer_cond(code, ml), ml, keep)

        exact = float64_eval(model, *args, fn=forward)
        assert_golden_close(forward(model, *args), io["out.fw_logits"], exact, f"{case.kind} out.fw_logits")
    check_fw_draws(case, floor=None)


@pytest.mark.parametrize("case", [c for c in CASES if "rd" in c.meta["calls"]], ids=str)
@pytest.mark.parametrize("mode", ["default", "fused_cfg", "static_shapes", "reference_loop"])
def test_rd_replay(case, mode):
    io, model, call = case.io, load_s2a(case.path), case.call("rd")
    with torch.no_grad():
        assert_close(model.cond_emb(io["in.rd_semantic_code"]), io["mid.rd_cond"], what="mid.rd_cond")
    noise = ReplayNoise.from_file(case.path / call["noise_file"])
    opts = decode_options(call)
    if mode in ("fused_cfg", "static_shapes"):
        opts = dataclasses.replace(opts, **{mode: True})
    sem, prompt = io["in.rd_semantic_code"][0], io["in.rd_prompt"][0]
    gt = io["in.rd_gt_code"][0] if "in.rd_gt_code" in io else None
    if mode == "reference_loop":  # the written-out batch-1 loop (sampling.s2a_reference)
        out = s2a_reference(model, sem, prompt, opts, noise, gt)
    else:
        (out,) = s2a_generate(model, [sem], [prompt], opts, [noise], None if gt is None else [gt])
    assert torch.equal(out, io[output_name(call)][0])
    assert noise.consumed, f"{noise.remaining} noise tensors left"


@pytest.mark.parametrize("case", [c for c in CASES if "rd" in c.meta["calls"]], ids=str)
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_rd_batched(case, static):
    """Golden item second in a batch with a shorter item: golden codes, all noise consumed;
    the other item equals its own B=1 run with an equally seeded generator."""
    io, model, call = case.io, load_s2a(case.path), case.call("rd")
    opts = dataclasses.replace(decode_options(call), static_shapes=static)
    sem, prompt = io["in.rd_semantic_code"][0], io["in.rd_prompt"][0]
    gt = io["in.rd_gt_code"][0] if "in.rd_gt_code" in io else None
    sem_b, prompt_b = sem[1:-2], prompt[:-1]  # prompt one shorter, target one shorter
    gt_b = None if gt is None else gt[1:-1]
    noise = ReplayNoise.from_file(case.path / call["noise_file"])
    nb = TorchNoise(torch.Generator().manual_seed(3))
    out_b, out_a = s2a_generate(
        model, [sem_b, sem], [prompt_b, prompt], opts, [nb, noise], None if gt is None else [gt_b, gt]
    )
    assert torch.equal(out_a, io[output_name(call)][0])
    assert noise.consumed
    alone = TorchNoise(torch.Generator().manual_seed(3))
    (ref_b,) = s2a_generate(model, [sem_b], [prompt_b], opts, [alone], None if gt is None else [gt_b])
    assert torch.equal(out_b, ref_b)
    assert alone.draws == nb.draws


@pytest.mark.parametrize("case", [c for c in CASES if "pipe" in c.meta["calls"]], ids=str)
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_pipe_replay(case, static):
    """Metis stage 2 with the fixed settings (spec §1.5); the 1-layer model from ../s2a_1layer."""
    io, call = case.io, case.call("pipe")
    full, one = load_s2a(case.path), load_s2a(case.path.parent / "s2a_1layer")
    noise = ReplayNoise.from_file(case.path / call["noise_file"])
    passes = full.diff_estimator.passes + one.diff_estimator.passes
    (out,) = metis_semantic_to_acoustic(
        one, full, [io["in.pipe_semantic_code"][0]], [io["in.pipe_prompt"][0]], [noise], static_shapes=static
    )
    assert torch.equal(out, io[output_name(call)][0])
    assert noise.consumed, f"{noise.remaining} noise tensors left"
    assert full.diff_estimator.passes + one.diff_estimator.passes > passes

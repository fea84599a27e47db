"""Shared wiring for the generator golden tests (stage 1, S2A, LoRA): golden README recipes."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import torch

from metis_cli.assets import checkpoint
from metis_cli.core.decoding import DecodeOptions, ReplayNoise, stage1_generate
from metis_cli.nn.s2a import S2A_TOLERATED_EXTRA, MaskGCTS2A, S2AConfig
from metis_cli.nn.stage1 import MetisStage1, Stage1Config, l2s_condition

from .cases import Case, assert_close, assert_golden_close, float64_eval

STAGE1_FT = {"t2s_phone": "tts", "t2s_nophone": None}  # other stage-1 kinds: the task of the name


def is_stage1_kind(kind: str) -> bool:
    return kind in STAGE1_FT or kind.startswith("metis_full_")


def stage1_ft_type(case: Case) -> str | None:
    return STAGE1_FT[case.kind] if case.kind in STAGE1_FT else case.task


@functools.cache
def load_stage1(path: Path, kind: str, ft_type: str | None) -> MetisStage1:
    cfg = Stage1Config.from_dict(json.loads((path / "config.json").read_text()), ft_type)
    model = checkpoint.build_on_meta(lambda: MetisStage1(cfg))
    checkpoint.load_file_into(model, path / "weights.safetensors")
    return model.eval()


@functools.cache
def load_s2a(path: Path) -> MaskGCTS2A:
    cfg = S2AConfig.from_dict(json.loads((path / "config.json").read_text()))
    model = checkpoint.build_on_meta(lambda: MaskGCTS2A(cfg))
    checkpoint.load_file_into(model, path / "weights.safetensors", tolerated_extra=S2A_TOLERATED_EXTRA)
    return model.eval()


def output_name(call: dict) -> str:
    """The tensor a run is compared with: the first word of its `output` field."""
    return call["output"].split()[0]


def decode_options(call: dict) -> DecodeOptions:
    steps = call["n_timesteps"]
    return DecodeOptions(
        steps=tuple(steps) if isinstance(steps, list) else int(steps),
        cfg=float(call["cfg"]),
        rescale_cfg=float(call["rescale_cfg"]),
        temperature=float(call["temp"]),
        filter_thres=float(call["filter_thres"]),
    )


def stage1_runs(case: Case) -> list[str]:
    return [r for r, c in case.meta["calls"].items() if isinstance(c, dict) and r.startswith("rd")]


def stage1_rd_inputs(case: Case, run: str) -> dict:
    """Inputs of a stage-1 sampling run (golden README, "Stage-1 rd*")."""
    io = case.io
    own = run != "rd" and any(f"in.{run}_{n}" in io for n in ("prompt", "phone_id"))  # omni's rd_tts
    pre = f"in.{run}_" if own else "in.rd_"
    prompt = io[pre + "prompt"][0] if pre + "prompt" in io else torch.zeros(0, dtype=torch.long)
    phones = io[pre + "phone_id"][0] if pre + "phone_id" in io else None
    cond = None
    if not own:
        if "in.rd_finetune_cond" in io:
            cond = io["in.rd_finetune_cond"][0]
        elif "in.rd_video_feature" in io:
            cond = l2s_condition(io["in.rd_video_feature"], prompt.shape[0])
    return {"prompt": prompt, "phones": phones, "cond": cond, "target_len": int(case.call(run)["target_len"])}


def run_stage1_replay(model: MetisStage1, case: Case, run: str, opts: DecodeOptions | None = None) -> None:
    """Replay a stage-1 run with its noise file: token-exact, every noise tensor consumed."""
    call = case.call(run)
    x = stage1_rd_inputs(case, run)
    noise = ReplayNoise.from_file(case.path / call["noise_file"])
    out = stage1_generate(
        model,
        [x["prompt"]],
        [x["target_len"]],
        None if x["phones"] is None else [x["phones"]],
        None if x["cond"] is None else [x["cond"]],
        opts or decode_options(call),
        [noise],
    )[0]
    expected = case.io[output_name(call)][0]
    if expected.shape[0] != x["target_len"]:
        out = torch.cat([x["prompt"], out])
    assert torch.equal(out, expected), f"{case.kind} {run}: tokens differ\n{out}\n{expected}"
    assert noise.consumed, f"{case.kind} {run}: {noise.remaining} noise tensors left"


def check_stage1_fw(model: MetisStage1, case: Case, *, unmerged: MetisStage1 | None = None) -> None:
    """The `fw` recipe for T2S / Metis (and, with `unmerged`, the unmerged-LoRA logits)."""
    io = case.io
    mask = io["mid.fw_mask"]  # (B, L, 1)
    x0 = io["in.fw_x0"]
    with torch.no_grad():
        xt = mask * model.mask_emb.weight[0] + (1 - mask) * model.cond_emb(x0)
        assert_close(xt, io["mid.fw_xt"], what="mid.fw_xt")
        keep = io["in.bb_x_mask"] if "in.bb_x_mask" in io else io["in.fw_x_mask"]
        ph, ph_keep = io.get("in.bb_phone_id"), io.get("in.bb_phone_mask")
        if "in.fw_finetune_cond" in io:
            assert_close(
                model.adapt(io["in.fw_finetune_cond"]), io["mid.adapter_out"], what="mid.adapter_out"
            )
            xt = io["mid.fw_xt"] + io["mid.adapter_out"]
        else:
            xt = io["mid.fw_xt"]
        args = (xt, io["mid.fw_t"], keep, ph, ph_keep)
        what = f"{case.kind} out.fw_logits"
        assert_golden_close(model(*args), io["out.fw_logits"], float64_eval(model, *args), what)
        if unmerged is not None:
            assert_golden_close(
                unmerged(*args),
                io["out.fw_logits_unmerged_lora"],
                float64_eval(unmerged, *args),
                f"{case.kind} out.fw_logits_unmerged_lora",
            )
    check_fw_draws(case, floor=0.2)


def check_fw_draws(case: Case, *, floor: float | None) -> None:
    """Consistency of the captured fw draws and the mask outputs (exact / 1e-5)."""
    io = case.io
    mask = io["mid.fw_mask"]
    keep = io["in.bb_x_mask"] if "in.bb_x_mask" in io else io["in.fw_x_mask"]
    plen = io["out.fw_prompt_len"] if "out.fw_prompt_len" in io else io["in.fw_prompt_len"]
    for b, n in enumerate(plen.tolist()):
        assert mask[b, :n].sum() == 0, f"masked position before prompt length {n} in item {b}"
    assert torch.equal(io["out.fw_final_mask"], mask * keep[..., None]), "out.fw_final_mask != mask * x_mask"
    t = io["mid.fw_t"]
    prob = torch.sin(t * math.pi / 2)
    if floor is not None:
        prob = prob.clamp(min=floor)
    assert_close(prob, io["out.fw_mask_prob"], what="out.fw_mask_prob")


def unknown_outputs(case: Case, known: set[str], runs: list[str]) -> list[str]:
    """out.* tensors of a case that no check covers (`runs`: the sampling runs the test replays)."""
    covered = known | {output_name(case.call(r)) for r in runs}
    return sorted(k for k in case.io if k.startswith("out.") and k not in covered)

"""Golden tests of the LoRA path: metis_lora/<task> (base + adapter + LoRA -> merged model)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from metis_cli.assets import checkpoint
from metis_cli.assets.lora import (
    apply_unmerged_lora,
    assemble_lora_stage1,
    expected_lora_shapes,
    load_adapter,
    merge_lora,
)
from metis_cli.errors import CheckpointError
from metis_cli.nn.stage1 import MetisStage1, Stage1Config

from .cases import MERGED_ATOL, all_cases, assert_close
from .generator_helpers import check_stage1_fw, run_stage1_replay, stage1_runs, unknown_outputs

CASES = [c for c in all_cases() if c.kind.startswith("metis_lora/")]
KNOWN = {
    "out.fw_logits",
    "out.fw_final_mask",
    "out.fw_prompt_len",
    "out.fw_mask_prob",
    "out.fw_logits_unmerged_lora",
}


def files(case) -> dict:
    return {
        "base": checkpoint.read_tensors(case.path.parent / "base.safetensors"),
        "adapter": checkpoint.read_tensors(case.path / "adapter.safetensors"),
        "lora": checkpoint.read_tensors(case.path / "lora.safetensors"),
    }


def config(case) -> Stage1Config:
    return Stage1Config.from_dict(case.config, case.task)


def assemble(case, **override) -> MetisStage1:
    cfg, f = config(case), {**files(case), **override}
    return assemble_lora_stage1(
        cfg, f["base"], f["adapter"], f["lora"], cfg.lora_r, cfg.lora_alpha, ("base", "adapter", "lora")
    )


@functools.cache
def merged_model(path: Path) -> MetisStage1:
    return assemble(next(c for c in CASES if c.path == path)).eval()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_output_is_checked(case):
    assert not unknown_outputs(case, KNOWN, stage1_runs(case))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_config(case):
    cfg = config(case)
    assert cfg.use_lora and cfg.adapter == "gated"
    block = case.config["model"]["t2s_model"]
    assert (cfg.lora_r, cfg.lora_alpha) == (block["lora_r"], block["lora_alpha"])


@pytest.mark.parametrize("case", CASES, ids=str)
def test_merged_weights(case):
    model = merged_model(case.path)
    expected = case.tensors("merged.safetensors")
    state = model.state_dict()
    assert set(state) == set(expected)
    for k, v in expected.items():
        assert_close(state[k], v, atol=MERGED_ATOL, what=k)
    # only the targeted weights changed, and every one of them did
    base = files(case)["base"]
    changed = {k for k in base if not torch.equal(base[k], state[k])}
    n_layers = config(case).num_layers
    assert len(changed) == 7 * n_layers
    assert all(".self_attn." in k or ".mlp." in k for k in changed)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_merged_and_unmerged(case):
    cfg, f = config(case), files(case)
    unmerged = checkpoint.build_on_meta(lambda: MetisStage1(cfg))
    state = dict(f["base"]) | {k.removeprefix("model."): v for k, v in f["adapter"].items()}
    checkpoint.load_state(unmerged, state, source="base+adapter")
    apply_unmerged_lora(unmerged, f["lora"], cfg.lora_r, cfg.lora_alpha, "lora")
    check_stage1_fw(merged_model(case.path), case, unmerged=unmerged.eval())


@pytest.mark.parametrize("case", CASES, ids=str)
def test_replay(case):
    for run in stage1_runs(case):
        run_stage1_replay(merged_model(case.path), case, run)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_load_adapter_matches_assembly(case):
    """`load_adapter` on a loaded base+adapter model gives the file's adapter values."""
    cfg, f = config(case), files(case)
    model = merged_model(case.path)
    other = checkpoint.build_on_meta(lambda: MetisStage1(cfg))
    zeros = {k: torch.zeros_like(v) for k, v in f["adapter"].items()}
    checkpoint.load_state(
        other, dict(f["base"]) | {k.removeprefix("model."): v for k, v in zeros.items()}, source="x"
    )
    load_adapter(other, f["adapter"], "adapter")
    for k, v in other.cond_adapter.state_dict().items():
        assert torch.equal(v, model.cond_adapter.state_dict()[k])


# ----------------------------------------------------------------------------- key naming


def _rename(tensors: dict, fn) -> dict:
    return {fn(k): v for k, v in tensors.items()}


ACCEPTED = {
    "official": lambda k: k,
    "missing .default": lambda k: k.replace(".default.", "."),
    "peft save_pretrained": lambda k: (
        "base_model.model." + k.removeprefix("model.").replace(".default.", ".")
    ),
    "PeftModel.state_dict": lambda k: "base_model.model." + k.removeprefix("model."),
    "DataParallel module.": lambda k: "module." + k,
    "no model. prefix": lambda k: k.removeprefix("model."),
}


@pytest.mark.parametrize("case", CASES[:1], ids=str)
@pytest.mark.parametrize("naming", list(ACCEPTED))
def test_known_spellings_merge_fully(case, naming):
    """Known prefixes / a missing adapter name are normalised: the merge is not silently skipped."""
    lora = _rename(files(case)["lora"], ACCEPTED[naming])
    model = assemble(case, lora=lora)
    expected = case.tensors("merged.safetensors")
    for k, v in model.state_dict().items():
        assert_close(v, expected[k], atol=MERGED_ATOL, what=k)


def _drop_layer(t: dict) -> dict:
    last = max(int(k.split(".layers.")[1].split(".")[0]) for k in t)
    return {k: v for k, v in t.items() if f".layers.{last}." not in k}


def _wrong_rank(t: dict) -> dict:
    return {k: (torch.cat([v, v], 0) if ".lora_A." in k else v) for k, v in t.items()}


BROKEN_LORA = {
    "renamed module": lambda t: _rename(t, lambda k: k.replace("q_proj", "query")),
    "renamed lora matrices": lambda t: _rename(t, lambda k: k.replace("lora_A", "lora_down")),
    "other adapter name": lambda t: _rename(t, lambda k: k.replace(".default.", ".task.")),
    "wrong rank": _wrong_rank,
    "missing layer": _drop_layer,
    "missing one matrix": lambda t: dict(list(t.items())[1:]),
    "extra tensor": lambda t: t | {"model.diff_estimator.norm.lora_A.default.weight": next(iter(t.values()))},
    "duplicate spelling": lambda t: t | _rename(t, lambda k: k.replace(".default.", ".")),
}


@pytest.mark.parametrize("case", CASES[:1], ids=str)
@pytest.mark.parametrize("broken", list(BROKEN_LORA))
def test_broken_lora_fails_loudly(case, broken):
    lora = BROKEN_LORA[broken](dict(files(case)["lora"]))
    with pytest.raises(CheckpointError, match="lora"):
        assemble(case, lora=lora)


@pytest.mark.parametrize("case", CASES[:1], ids=str)
def test_broken_base_and_adapter_fail_loudly(case):
    f = files(case)
    with pytest.raises(CheckpointError, match="base"):
        assemble(case, base=_rename(f["base"], lambda k: "model." + k))  # official: silently 0 loaded
    with pytest.raises(CheckpointError, match="base"):
        assemble(case, base={k: v for k, v in f["base"].items() if k != "to_logit.bias"})
    with pytest.raises(CheckpointError, match="adapter"):
        assemble(case, adapter=_rename(f["adapter"], lambda k: k.removeprefix("model.")))
    with pytest.raises(CheckpointError, match="adapter"):
        assemble(case, adapter={k: v for k, v in f["adapter"].items() if "gate_scale" not in k})


@pytest.mark.parametrize("case", CASES[:1], ids=str)
def test_merge_into_memory_mapped_base_leaves_file_tensors(case):
    """The merge writes new tensors for the targets; the (mmapped) base tensors stay unchanged."""
    f = files(case)
    before = {k: v.clone() for k, v in f["base"].items()}
    cfg = config(case)
    assemble_lora_stage1(cfg, f["base"], f["adapter"], f["lora"], cfg.lora_r, cfg.lora_alpha, ("b", "a", "l"))
    assert all(torch.equal(before[k], f["base"][k]) for k in before)


def test_merge_lora_rejects_nonpositive_rank():
    cfg = Stage1Config(
        hidden_size=8, num_layers=1, num_heads=2, cond_codebook_size=4, cond_dim=4, use_phone_cond=False
    )
    model = MetisStage1(cfg)
    with pytest.raises(CheckpointError):
        merge_lora(model, {}, 0, 1.0, "x.safetensors")


@pytest.mark.parametrize("r, alpha", [(2, 4.0), (3, 5.0)])  # scale 2 (exact) and 5/3 (rounded)
@pytest.mark.parametrize("out_dtype", [None, torch.bfloat16])
def test_merge_is_bit_identical_to_the_plain_expression(r, alpha, out_dtype):
    """The in-place merge rounds exactly like `W.float() + (B @ A) * (alpha / r)`, then casts."""
    cfg = Stage1Config(
        hidden_size=24, num_layers=2, num_heads=2, cond_codebook_size=4, cond_dim=4, use_phone_cond=False
    )
    g = torch.Generator().manual_seed(0)
    model = MetisStage1(cfg)
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=g)
    lora = {k: torch.randn(shape, generator=g) * 0.3 for k, shape in expected_lora_shapes(model, r).items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merge_lora(model, lora, r, alpha, "x.safetensors", out_dtype=out_dtype)
    state = model.state_dict()
    changed = 0
    for k, w in before.items():
        path = k.removesuffix(".weight")
        a = lora.get(f"model.{path}.lora_A.default.weight")
        if a is None:
            assert torch.equal(state[k], w), k
            continue
        b = lora[f"model.{path}.lora_B.default.weight"]
        expected = (w.float() + (b @ a) * (alpha / r)).to(out_dtype or w.dtype)
        assert state[k].dtype == expected.dtype and torch.equal(state[k], expected), k
        changed += 1
    assert changed == 7 * cfg.num_layers

"""Fast modes (bf16, SDPA + fused CFG, padded batches, low memory) on the tiny bundle, and the
benchmark harness's measurements (token agreement, logit error, checkpoint writer).

Correctness only: every mode must run end to end and its agreement metrics must be computed
and sensible. Never timings.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
FAST_DECODING = {"steps": 2, "s2a_steps_1layer": (2,), "s2a_steps_full": (2, 2) + (1,) * 10}


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


bench = _module("bench")
make_full_size = _module("make_full_size")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from metis_cli.testing.tiny_bundle import write_tiny_bundle

    return write_tiny_bundle(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("in") / "noisy.wav"
    bench.make_input(path, 0.6, None)
    return path


def _run(bundle: Path, noisy: Path, tmp: Path, jobs: int = 1, **engine) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = {
        "task": "se",
        "cache": str(bundle),
        "options": {"device": "cpu", **engine, **FAST_DECODING},  # exactness is asserted: pin the CPU
        "inputs": [str(noisy)],
        "seed": 3,
        "jobs": jobs,
        "tmp": str(tmp),
    }
    return bench.worker(cfg)


@pytest.fixture(scope="module")
def reference(bundle, noisy, tmp_path_factory) -> dict:
    return _run(bundle, noisy, tmp_path_factory.mktemp("ref"), jobs=2)


def test_reference_run_is_recorded(reference):
    assert reference["passes"] == {"stage1": 4, "s2a_1layer": 4, "s2a_full": 48}  # 2 jobs, no CFG in stage 1
    assert reference["rows"]["s2a_full"] == reference["passes"]["s2a_full"]  # batch 1: one row per pass
    assert set(reference["stages"]) >= {"conditions", "stage1", "s2a_1layer", "s2a_full", "decode"}
    assert reference["rtf"] > 0 and reference["peak_rss_bytes"] >= reference["rss_ready_bytes"] > 0
    tokens = torch.load(reference["tokens_file"])
    assert len(tokens["semantic"]) == 2 and tokens["codes"][0].shape[1] == 12
    assert tokens["codes"][0].shape[0] == tokens["semantic"][0].shape[0]


def test_same_configuration_agrees_fully(reference, bundle, noisy, tmp_path):
    again = _run(bundle, noisy, tmp_path, jobs=2)
    assert bench.agreement(reference, again) == {"semantic": 1.0, "acoustic_all": 1.0, "acoustic_cb0": 1.0}


@pytest.mark.parametrize(
    "engine",
    [
        {"dtype": "bfloat16"},
        {"attention": "sdpa", "fused_cfg": True},
        {"dtype": "bfloat16", "low_memory": True},
    ],
    ids=["bf16", "sdpa-fused", "bf16-lowmem"],
)
def test_fast_mode_runs_and_is_measured(reference, bundle, noisy, tmp_path, engine):
    fast = _run(bundle, noisy, tmp_path, jobs=2, **engine)
    assert fast["semantic_frames"] == reference["semantic_frames"]
    if engine.get("fused_cfg"):  # S2A full uses CFG: one fused pass per step instead of two
        assert fast["passes"]["s2a_full"] == reference["passes"]["s2a_full"] // 2
    agree = bench.agreement(reference, fast)
    assert set(agree) == {"semantic", "acoustic_all", "acoustic_cb0"}
    assert agree["semantic"] > 0.2  # same seed and input: far above chance (1/32) on the tiny model
    assert fast["audio_seconds"] == pytest.approx(reference["audio_seconds"])


def test_batched_items_equal_batch_one(reference, bundle, noisy, tmp_path):
    batched = _run(bundle, noisy, tmp_path, jobs=2, batch_size=2)
    assert bench.agreement(reference, batched) == {"semantic": 1.0, "acoustic_all": 1.0, "acoustic_cb0": 1.0}
    assert batched["rows"]["s2a_full"] == 2 * batched["passes"]["s2a_full"]  # two items per pass


def test_low_memory_releases_stage_models(bundle, noisy, tmp_path, monkeypatch):
    import gc
    import weakref

    from metis_cli import api
    from metis_cli.core import decoding

    pipe = api.load("se", checkpoint_dir=bundle, offline=True, low_memory=True, **FAST_DECODING)
    job = pipe.make_job([noisy], tmp_path / "o.wav", seed=1)
    seen = {}
    orig_s1, orig_s2a = decoding.stage1_generate, decoding.metis_semantic_to_acoustic

    def stage1(model, *a, **k):
        seen["stage1"] = weakref.ref(model)
        return orig_s1(model, *a, **k)

    def s2a(*a, **k):  # while S2A runs, stage 1 and the condition models must be gone
        gc.collect()
        seen["alive_during_s2a"] = seen["stage1"]() is not None
        seen["resident_during_s2a"] = pipe.engine.loader.resident
        return orig_s2a(*a, **k)

    monkeypatch.setattr(decoding, "stage1_generate", stage1)
    monkeypatch.setattr(decoding, "metis_semantic_to_acoustic", s2a)
    (res,) = list(pipe.engine.run([job], pipe.decoding(), keep=True))
    assert seen["alive_during_s2a"] is False
    # the large models of other stages are freed; the small codecs stay for the next batch
    assert not seen["resident_during_s2a"] & {"ssl", "stage1"}
    assert {"s2a_1layer", "s2a_full"} <= seen["resident_during_s2a"]
    assert res.ok and np.isfinite(res.wav).all()
    resident = pipe.engine.loader.resident
    assert not resident & {"ssl", "stage1", "s2a_1layer", "s2a_full"}
    assert "acoustic_decoder" in resident


def test_logit_error_is_zero_for_identical_and_small_for_bf16(bundle):
    from metis_cli.assets.cards import ModelStore
    from metis_cli.engine import Engine, EngineOptions

    store = ModelStore(bundle, offline=True)
    ref = Engine("se", store=store, options=EngineOptions(device="cpu"))
    fast = Engine("se", store=store, options=EngineOptions(dtype="bfloat16", device="cpu"))
    for name in ("stage1", "s2a_1layer", "s2a_full"):
        outs = []
        for eng in (ref, ref, fast):
            g = torch.Generator().manual_seed(5)
            outs.append(bench._one_forward(name, eng.component(name), 20, g).float())
        assert torch.equal(outs[0], outs[1])
        assert outs[2].dtype == torch.float32 and torch.isfinite(outs[2]).all()
        rel = float((outs[2] - outs[0]).abs().max() / outs[0].abs().max())
        assert 0.0 < rel < 0.1, name  # bf16 differs, but only by rounding
    res = bench.logit_error(str(bundle), "se", 0.4, device="cpu")
    assert set(res) == {"stage1", "s2a_1layer", "s2a_full"}
    assert all(0.0 < r["rel_max"] < 0.1 and r["top1_agree"] >= 0.9 for r in res.values())


def test_logit_error_inputs_follow_the_model_device(bundle):
    """On the meta device any input left on the CPU fails to mix: `_one_forward` builds its
    inputs on the model's device (the --logit-error inputs on a CUDA engine)."""
    from metis_cli.assets.cards import ModelStore
    from metis_cli.engine import Engine, EngineOptions

    eng = Engine("se", store=ModelStore(bundle, offline=True), options=EngineOptions(device="cpu"))
    for name in ("stage1", "s2a_1layer", "s2a_full"):
        model = copy.deepcopy(eng.component(name)).to("meta")
        out = bench._one_forward(name, model, 20, torch.Generator().manual_seed(5))
        assert out.device.type == "meta" and out.shape[:2] == (1, 20)


def test_schedule_flops_match_the_formula():
    """One stage-1 pass (1 step, no CFG, no phones, no adapter) replayed on the meta device:
    q/k/v/o + gated MLP + q k^T and attention x v + the norms' weight and time MLPs + the head."""
    from metis_cli.core import decoding
    from metis_cli.nn.stage1 import MetisStage1, Stage1Config

    H, layers, V, Lp, L = 32, 2, 50, 5, 7
    cfg = Stage1Config(
        hidden_size=H, num_layers=layers, num_heads=4, cond_codebook_size=V, cond_dim=4, use_phone_cond=False
    )
    model = MetisStage1(cfg).eval()
    args = ([torch.zeros(Lp, dtype=torch.long)], [L], None, None, decoding.DecodeOptions(steps=1))
    got = bench.schedule_flops(
        [("stage1", model, decoding.stage1_generate, (*args, [decoding.TorchNoise()]), {})]
    )
    N = Lp + L
    per_layer = 4 * 2 * N * H * H + 3 * 2 * N * H * 4 * H + 2 * 2 * N * N * H + 2 * (2 * H * H)
    assert got == {"stage1": layers * per_layer + 2 * H * H + 2 * (2 * H * 4 * H) + 2 * L * H * V}


def test_run_records_gemm_flops_per_stage(reference, bundle, noisy, tmp_path):
    """The schedule's FLOPs depend on lengths and steps only: one job is exactly half of two."""
    one = _run(bundle, noisy, tmp_path, jobs=1)
    assert set(reference["gemm_flops"]) == {"stage1", "s2a_1layer", "s2a_full"}
    assert all(reference["gemm_flops"][k] == 2 * one["gemm_flops"][k] > 0 for k in one["gemm_flops"])
    rates = bench.matmul_rates(seconds=0.02, m=64, h=64)
    assert set(rates) == {"float32", "bfloat16"} and all(v > 0 for v in rates.values())


def test_safetensors_writer_round_trips(tmp_path):
    from safetensors.torch import load_file

    from metis_cli.assets.checkpoint import read_header

    spec = {
        "a.weight": ((3, 5), torch.float32),
        "istft.window": ((8,), torch.float32),
        "e": ((0, 4), torch.float32),
    }
    g = torch.Generator().manual_seed(0)
    made = {}

    def make(key):
        made[key] = make_full_size.draw(key, spec[key][0], g)
        return made[key]

    make_full_size.write_safetensors(tmp_path / "x.safetensors", spec, make)
    back = load_file(str(tmp_path / "x.safetensors"))
    assert set(back) == set(spec) and all(torch.equal(back[k], made[k]) for k in spec)
    assert torch.equal(back["istft.window"], torch.hann_window(8, periodic=True))
    assert read_header(tmp_path / "x.safetensors")["e"] == ("F32", (0, 4))
    assert not (tmp_path / "x.safetensors.part").exists()
    with pytest.raises(ValueError, match="header says"):
        make_full_size.write_safetensors(tmp_path / "y.safetensors", spec, lambda k: torch.zeros(2))


def test_options_parse_to_typed_values():
    opts = bench.parse_options(["dtype=bfloat16", "batch_size=4", "fused_cfg=true", "s2a_steps_1layer=[2]"])
    assert opts == {"dtype": "bfloat16", "batch_size": 4, "fused_cfg": True, "s2a_steps_1layer": (2,)}


def test_bf16_lora_assembly_equals_fp32_assembly_cast(bundle):
    """The merged weights are cast one by one in bf16 mode; same numbers as merging all, then casting."""
    from metis_cli.assets.cards import ModelStore
    from metis_cli.engine import Engine, EngineOptions

    store = ModelStore(bundle, offline=True)
    fast = Engine("se", store=store, options=EngineOptions(dtype="bfloat16", device="cpu")).component(
        "stage1"
    )
    ref = (
        Engine("se", store=store, options=EngineOptions(device="cpu")).component("stage1").to(torch.bfloat16)
    )
    a, b = fast.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].dtype == torch.bfloat16 and torch.equal(a[k], b[k]) for k in a)


def test_tts_benchmark_generates_the_requested_length(bundle, noisy, tmp_path):
    """--task tts: the input is the speaker prompt, the target is `tts_seconds` of speech."""
    cfg = {
        "task": "tts",
        "cache": str(bundle),
        "options": dict(FAST_DECODING),
        "inputs": [str(noisy)],
        "seed": 3,
        "jobs": 1,
        "tmp": str(tmp_path),
        "tts_seconds": 0.4,
    }
    res = bench.worker(cfg)
    assert res["semantic_frames"] == [20]  # 0.4 s at 50 frames per second
    assert res["passes"]["stage1"] > 0 and res["rtf"] > 0

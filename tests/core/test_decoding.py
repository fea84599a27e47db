"""Sampler unit tests on tiny random models: schedule arithmetic, noise sources, the reference
loops against the batched loops, per-item batch invariance, fast modes (static shapes, the
CUDA-graph flag), the non-finite guard, pass counting and bf16 weights."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from metis_cli.core import decoding
from metis_cli.core.decoding import (
    DecodeOptions,
    ReplayNoise,
    TorchNoise,
    _run_padded,
    backbone_forward,
    gumbel,
    next_mask_count,
    remask_static,
    remask_topk,
    s2a_generate,
    s2a_reference,
    stage1_generate,
    stage1_reference,
    time_grid,
    top_k_count,
)
from metis_cli.errors import InputError, MetisError, NonFiniteError
from metis_cli.nn.s2a import MaskGCTS2A, S2AConfig
from metis_cli.nn.stage1 import MetisStage1, Stage1Config, l2s_condition

H, V = 32, 50


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            elif name.endswith("to_weight.bias"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.5 + 0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def stage1() -> MetisStage1:
    block = {"hidden_size": H, "num_layers": 2, "num_heads": 4, "cond_codebook_size": V, "cond_dim": 12}
    return randomize(MetisStage1(Stage1Config.from_dict(block | {"use_phone_cond": True}, "omni")), 1)


@pytest.fixture(scope="module")
def s2a() -> MaskGCTS2A:
    block = {"num_quantizer": 3, "hidden_size": H, "num_layers": 2, "num_heads": 4}
    return randomize(
        MaskGCTS2A(S2AConfig.from_dict(block | {"codebook_size": 40, "cond_codebook_size": V})), 2
    )


# ----------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize("vocab,k", [(100, 3), (128, 3), (1024, 21), (8192, 164)])
def test_top_k_count_python_float_rule(vocab, k):
    assert top_k_count(vocab, 0.98) == k


def test_gumbel_formula():
    u = torch.tensor([0.0, 0.25, 0.5, 0.999999])
    expected = -torch.log(-torch.log(u + 1e-10) + 1e-10)
    assert torch.equal(gumbel(u), expected)
    assert gumbel(u).dtype == torch.float32


def test_schedule_counts():
    t = time_grid(10)
    assert t[0] == 1.0 and t[-1] == 0.0 and len(t) == 11
    assert [next_mask_count(x, 199) for x in t[1:]] == [196, 189, 177, 160, 140, 116, 90, 61, 31, 0]


@pytest.mark.parametrize("steps,largest", [(40, 25), (25, 15), (16, 10), (10, 6)])
def test_early_stop_lengths(steps, largest):
    t_last = time_grid(steps)[steps - 1]
    assert next_mask_count(t_last, largest) == 0
    assert next_mask_count(t_last, largest + 1) >= 1


# ----------------------------------------------------------------------------- noise sources


def test_torch_noise_matches_global_generator():
    torch.manual_seed(5)
    a = torch.zeros(2, 3, 4).uniform_(0, 1)
    b = torch.zeros(2, 3).uniform_(0, 1)
    noise = TorchNoise(torch.Generator().manual_seed(5))
    assert torch.equal(noise.uniform((2, 3, 4), "sample"), a)
    assert torch.equal(noise.uniform((2, 3), "choice"), b)
    assert noise.draws == 2


def test_replay_noise_checks_shapes_kinds_and_consumption():
    u = [torch.rand(1, 3, 5), torch.rand(1, 3)]
    noise = ReplayNoise(u, ["sample", "choice"])
    with pytest.raises(ValueError, match="mismatch"):
        noise.uniform((1, 3), "choice")
    assert torch.equal(noise.uniform((1, 3, 5), "sample"), u[0])
    assert not noise.consumed and noise.remaining == 1
    with pytest.raises(ValueError, match="mismatch"):
        noise.uniform((1, 4), "choice")
    noise.uniform((1, 3), "choice")
    assert noise.consumed
    with pytest.raises(ValueError, match="exhausted"):
        noise.uniform((1, 3), "choice")


# ----------------------------------------------------------------------------- batching


def _stage1_items(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    specs = [(5, 12, 7), (0, 4, 3), (3, 9, 0)]  # (prompt, target, phones); target 4 stops early
    prompts = [torch.randint(0, V, (lp,), generator=g) for lp, _, _ in specs]
    lens = [n for _, n, _ in specs]
    phones = [torch.randint(0, 1000, (p,), generator=g) for _, _, p in specs]
    cond = [torch.randn(lp + n, 12, generator=g) for lp, n, _ in specs]
    return prompts, lens, phones, cond


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("with_cond", [False, True])
def test_stage1_batch_equals_single_items(stage1, fused, with_cond):
    prompts, lens, phones, cond = _stage1_items()
    opts = DecodeOptions(steps=10, cfg=2.5, fused_cfg=fused)
    cond = cond if with_cond else None
    noises = [TorchNoise(torch.Generator().manual_seed(10 + b)) for b in range(3)]
    batched = stage1_generate(stage1, prompts, lens, phones, cond, opts, noises)
    for b in range(3):
        alone = TorchNoise(torch.Generator().manual_seed(10 + b))
        (ref,) = stage1_generate(
            stage1, [prompts[b]], [lens[b]], [phones[b]], None if cond is None else [cond[b]], opts, [alone]
        )
        assert torch.equal(batched[b], ref), f"item {b}"
        assert alone.draws == noises[b].draws, f"item {b} drew a different number of tensors"
        assert batched[b].shape == (lens[b],) and int(batched[b].max()) < V


def test_padded_pass_matches_single_sequences(stage1):
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randn(1, n, H, generator=g) for n in (7, 3, 11)]
    net = stage1.diff_estimator
    with torch.no_grad():
        batched = _run_padded(net, seqs, 0.6)
        for s, out in zip(seqs, batched, strict=True):
            ref = _run_padded(net, [s], 0.6)[0]
            assert (out - ref).abs().max() <= 1e-5


def test_s2a_batch_equals_single_items(s2a):
    g = torch.Generator().manual_seed(4)
    specs = [(4, 9), (0, 5), (2, 14)]  # (prompt, target)
    sem = [torch.randint(0, V, (lp + n,), generator=g) for lp, n in specs]
    prompts = [torch.randint(0, 40, (lp, 12), generator=g) for lp, _ in specs]
    opts = DecodeOptions(steps=(6, 3, 1), cfg=2.5, temperature=1.5)
    noises = [TorchNoise(torch.Generator().manual_seed(20 + b)) for b in range(3)]
    out = s2a_generate(s2a, sem, prompts, opts, noises)
    for b in range(3):
        alone = TorchNoise(torch.Generator().manual_seed(20 + b))
        (ref,) = s2a_generate(s2a, [sem[b]], [prompts[b]], opts, [alone])
        assert torch.equal(out[b], ref)
        assert out[b].shape == (specs[b][1], 3)
        assert alone.draws == noises[b].draws


def test_pass_counter(stage1):
    prompts, lens, phones, _ = _stage1_items()
    net = stage1.diff_estimator
    for fused, per_step in ((False, 2), (True, 1)):
        before = net.passes
        stage1_generate(
            stage1,
            prompts[:1],
            lens[:1],
            None,
            None,
            DecodeOptions(steps=5, cfg=1.0, fused_cfg=fused),
            [TorchNoise()],
        )
        assert net.passes - before == 5 * per_step


def test_bad_inputs_raise(stage1, s2a):
    prompts, lens, phones, _ = _stage1_items()
    with pytest.raises(InputError):
        stage1_generate(stage1, prompts[:1], [0], None, None, DecodeOptions(steps=3), [TorchNoise()])
    with pytest.raises(InputError):
        stage1_generate(stage1, prompts[:2], lens[:1], None, None, DecodeOptions(steps=3), [TorchNoise()])
    with pytest.raises(InputError):  # wrong number of per-layer step counts
        s2a_generate(
            s2a,
            [torch.zeros(5, dtype=torch.long)],
            [torch.zeros(2, 12, dtype=torch.long)],
            DecodeOptions(steps=(3, 1)),
            [TorchNoise()],
        )


# ----------------------------------------------------------------------------- bf16, configs, L2S


def test_bf16_weights_run(stage1, s2a):
    import copy

    prompts, lens, phones, cond = _stage1_items()
    m16 = copy.deepcopy(stage1).to(torch.bfloat16)
    out = stage1_generate(
        m16, prompts, lens, phones, cond, DecodeOptions(steps=4, cfg=2.5), [TorchNoise()] * 3
    )
    assert [o.shape[0] for o in out] == lens and all(int(o.max()) < V for o in out)
    x, t = torch.randn(2, 6, H), torch.tensor([0.3, 0.9])
    with torch.no_grad():
        ref = stage1.diff_estimator(x, t)
        got = m16.diff_estimator(x.bfloat16(), t).float()
    assert (got - ref).abs().max() <= 0.1 * ref.abs().max()
    s16 = copy.deepcopy(s2a).to(torch.bfloat16)
    sem, pr = [torch.randint(0, V, (9,))], [torch.randint(0, 40, (3, 12))]
    (codes,) = s2a_generate(s16, sem, pr, DecodeOptions(steps=(3, 2, 1), cfg=2.5), [TorchNoise()])
    assert codes.shape == (6, 3)


@pytest.mark.parametrize(
    "ft,extra,adapter",
    [
        ("tts", {}, "none"),
        (None, {}, "none"),
        ("vc", {}, "gated"),
        ("l2s", {}, "plain"),
        ("se", {"use_zero_gate_adapter": False}, "plain"),
        ("l2s", {"use_lora": True}, "gated"),
        ("omni", {}, "gated"),
    ],
)
def test_adapter_rule(ft, extra, adapter):
    block = {"hidden_size": 8, "num_layers": 1, "num_heads": 2, "cond_codebook_size": 4, "cond_dim": 3}
    cfg = Stage1Config.from_dict({"model": {"t2s_model": block | extra}}, ft)
    assert cfg.adapter == adapter
    assert cfg.use_phone_cond  # absent -> True
    model = MetisStage1(cfg)
    keys = {k for k in model.state_dict() if k.startswith("cond_adapter.")}
    expected = {
        "none": set(),
        "gated": {
            f"cond_adapter.{n}"
            for n in (
                "gate_scale",
                "in_linear.weight",
                "in_linear.bias",
                "out_linear.weight",
                "out_linear.bias",
            )
        },
        "plain": {
            "cond_adapter.0.weight",
            "cond_adapter.0.bias",
            "cond_adapter.2.weight",
            "cond_adapter.2.bias",
        },
    }[adapter]
    assert keys == expected


def test_l2s_condition_formula():
    x = torch.randn(5, 3)
    out = l2s_condition(x, 4)
    assert out.shape == (4 + 10, 3)
    assert torch.equal(out[:4], torch.zeros(4, 3))
    up = out[4:]
    prev = torch.cat([x[:1], x[:-1]])
    nxt = torch.cat([x[1:], x[-1:]])
    assert torch.allclose(up[0::2], 0.75 * x + 0.25 * prev, atol=1e-6)
    assert torch.allclose(up[1::2], 0.75 * x + 0.25 * nxt, atol=1e-6)


def test_decode_options_frozen():
    opts = DecodeOptions(steps=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.cfg = 1.0  # type: ignore[misc]


# ----------------------------------------------------------------------------- reference loops


class LogitTap:
    """Records every output of the given Linear heads (the per-step logits), in call order."""

    def __init__(self, *heads):
        self.out: list[torch.Tensor] = []
        self.handles = [h.register_forward_hook(lambda m, a, y: self.out.append(y.clone())) for h in heads]

    def close(self) -> list[torch.Tensor]:
        for h in self.handles:
            h.remove()
        return self.out


def _noise(seed):
    return TorchNoise(torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("steps", [1, 4, 10])
@pytest.mark.parametrize("cfg", [0.0, 2.5])
@pytest.mark.parametrize("with_phones,with_cond", [(True, True), (False, False), (True, False)])
def test_stage1_batch_1_equals_reference_bit_for_bit(stage1, steps, cfg, with_phones, with_cond):
    """Same tokens, same draws, and the same logits at every step (torch.equal)."""
    prompts, lens, phones, cond = _stage1_items()
    opts = DecodeOptions(steps=steps, cfg=cfg)
    ph = phones[0] if with_phones else None
    c = cond[0] if with_cond else None
    tap = LogitTap(stage1.to_logit)
    ref_noise = _noise(1)
    ref = stage1_reference(stage1, prompts[0], lens[0], ph, c, opts, ref_noise)
    ref_logits = tap.out[:]
    tap.out.clear()
    noise = _noise(1)
    (out,) = stage1_generate(
        stage1, prompts[:1], lens[:1], None if ph is None else [ph], None if c is None else [c], opts, [noise]
    )
    got_logits = tap.close()
    assert torch.equal(out, ref)
    assert noise.draws == ref_noise.draws > 0
    assert len(got_logits) == len(ref_logits) >= 1
    assert all(torch.equal(a, b) for a, b in zip(got_logits, ref_logits, strict=True))


@pytest.mark.parametrize("cfg", [0.0, 2.5])
def test_stage1_batch_items_equal_reference(stage1, cfg):
    """fp32, B = 3 padded: every item's tokens and draw count equal its reference run."""
    prompts, lens, phones, cond = _stage1_items()
    opts = DecodeOptions(steps=10, cfg=cfg)
    noises = [_noise(30 + b) for b in range(3)]
    batched = stage1_generate(stage1, prompts, lens, phones, cond, opts, noises)
    for b in range(3):
        alone = _noise(30 + b)
        ref = stage1_reference(stage1, prompts[b], lens[b], phones[b], cond[b], opts, alone)
        assert torch.equal(batched[b], ref), f"item {b}"
        assert alone.draws == noises[b].draws


def _s2a_items(seed=4, gt=False):
    g = torch.Generator().manual_seed(seed)
    specs = [(4, 9), (0, 5), (2, 14)]  # (prompt, target)
    sem = [torch.randint(0, V, (lp + n,), generator=g) for lp, n in specs]
    prompts = [torch.randint(0, 40, (lp, 12), generator=g) for lp, _ in specs]
    gts = [torch.randint(0, 40, (n, 1), generator=g) for _, n in specs] if gt else None
    return sem, prompts, gts


@pytest.mark.parametrize("cfg", [0.0, 2.5])
@pytest.mark.parametrize("gt", [False, True])
def test_s2a_batch_1_equals_reference_bit_for_bit(s2a, cfg, gt):
    sem, prompts, gts = _s2a_items(gt=gt)
    opts = DecodeOptions(steps=(6, 3, 1), cfg=cfg, temperature=1.5)
    tap = LogitTap(*s2a.to_logits)
    ref_noise = _noise(2)
    ref = s2a_reference(s2a, sem[0], prompts[0], opts, ref_noise, None if gts is None else gts[0])
    ref_logits = tap.out[:]
    tap.out.clear()
    noise = _noise(2)
    (out,) = s2a_generate(s2a, sem[:1], prompts[:1], opts, [noise], None if gts is None else gts[:1])
    got_logits = tap.close()
    assert torch.equal(out, ref) and out.shape == (9, 3)
    assert noise.draws == ref_noise.draws > 0
    assert len(got_logits) == len(ref_logits) >= 3 - gt
    assert all(torch.equal(a, b) for a, b in zip(got_logits, ref_logits, strict=True))


@pytest.mark.parametrize("gt", [False, True])
def test_s2a_batch_items_equal_reference(s2a, gt):
    sem, prompts, gts = _s2a_items(gt=gt)
    opts = DecodeOptions(steps=(6, 3, 1), cfg=2.5, temperature=1.5)
    noises = [_noise(40 + b) for b in range(3)]
    out = s2a_generate(s2a, sem, prompts, opts, noises, gts)
    for b in range(3):
        alone = _noise(40 + b)
        ref = s2a_reference(s2a, sem[b], prompts[b], opts, alone, None if gts is None else gts[b])
        assert torch.equal(out[b], ref), f"item {b}"
        assert alone.draws == noises[b].draws


# ----------------------------------------------------------------------------- static shapes


def test_remask_static_selects_the_topk_set():
    g = torch.Generator().manual_seed(0)
    for L in (1, 2, 7, 64):
        scores = torch.rand(1, L, generator=g)
        masked = torch.rand(1, L, generator=g) < 0.6
        scores = scores.masked_fill(~masked, -torch.finfo(scores.dtype).max)
        for n in range(1, int(masked.sum()) + 1):  # the sampler's n never exceeds the masked count
            assert torch.equal(remask_static(scores, n), remask_topk(scores, n)), (L, n)
            assert remask_static(scores, torch.tensor(n)).shape == (1, L)


class ShapeTap:
    """Wraps net.run; records the (B, N) of every backbone forward."""

    def __init__(self, monkeypatch, net):
        self.shapes: list[tuple[int, int]] = []
        orig = net.run

        def run(h, t, keep=None):
            self.shapes.append(tuple(h.shape[:2]))
            return orig(h, t, keep)

        monkeypatch.setattr(net, "run", run)


@pytest.mark.parametrize("fused", [False, True])
def test_stage1_static_shapes_equal_default_tokens(stage1, fused, monkeypatch):
    """Item 1 (target 4) finishes early: the default loop drops it from the batch, the static
    loop keeps every forward at one shape; tokens and draws are the same."""
    prompts, lens, phones, cond = _stage1_items()
    opts = DecodeOptions(steps=10, cfg=2.5, fused_cfg=fused)
    tap = ShapeTap(monkeypatch, stage1.diff_estimator)
    noises = [_noise(50 + b) for b in range(3)]
    ref = stage1_generate(stage1, prompts, lens, phones, cond, opts, noises)
    default_shapes, tap.shapes = tap.shapes, []
    fast_noises = [_noise(50 + b) for b in range(3)]
    fast = stage1_generate(
        stage1, prompts, lens, phones, cond, dataclasses.replace(opts, static_shapes=True), fast_noises
    )
    assert all(torch.equal(a, b) for a, b in zip(fast, ref, strict=True))
    assert [n.draws for n in fast_noises] == [n.draws for n in noises]
    per_step = 1 if fused else 2  # forwards per step
    assert len(set(default_shapes)) > per_step  # the default loop's shapes change ...
    assert len(set(tap.shapes)) == per_step  # ... the static loop's repeat every step
    assert len(set(tap.shapes[0::per_step])) == 1 and len(set(tap.shapes[per_step - 1 :: per_step])) == 1
    assert tap.shapes[0][0] == (6 if fused else 3)


def test_s2a_static_shapes_equal_default_tokens(s2a, monkeypatch):
    sem, prompts, _ = _s2a_items()
    opts = DecodeOptions(steps=(10, 4, 1), cfg=2.5, temperature=1.5)
    tap = ShapeTap(monkeypatch, s2a.diff_estimator)
    noises = [_noise(60 + b) for b in range(3)]
    ref = s2a_generate(s2a, sem, prompts, opts, noises)
    tap.shapes = []
    fast_noises = [_noise(60 + b) for b in range(3)]
    fast = s2a_generate(s2a, sem, prompts, dataclasses.replace(opts, static_shapes=True), fast_noises)
    assert all(torch.equal(a, b) for a, b in zip(fast, ref, strict=True))
    assert [n.draws for n in fast_noises] == [n.draws for n in noises]
    first_layer = tap.shapes[: 2 * 10]  # 10 steps x (cond, uncond) of codebook 0
    assert len(set(first_layer[0::2])) == 1 and len(set(first_layer[1::2])) == 1


# ----------------------------------------------------------------------------- CUDA graphs flag


def test_cuda_graphs_flag_is_a_no_op_on_cpu(stage1, monkeypatch):
    def no_compile(*a, **k):
        raise AssertionError("torch.compile must not be called on the CPU")

    monkeypatch.setattr(torch, "compile", no_compile)
    net = stage1.diff_estimator
    opts = DecodeOptions(steps=6, cfg=2.5, static_shapes=True, cuda_graphs=True)
    assert backbone_forward(net, opts, torch.device("cpu")) == net.run
    prompts, lens, phones, cond = _stage1_items()
    a = stage1_generate(stage1, prompts, lens, phones, cond, opts, [_noise(b) for b in range(3)])
    b = stage1_generate(
        stage1,
        prompts,
        lens,
        phones,
        cond,
        dataclasses.replace(opts, cuda_graphs=False),
        [_noise(b) for b in range(3)],
    )
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_cuda_graphs_flag_compiles_once_per_module_on_cuda(monkeypatch):
    """The device guard, both ways, without a GPU: a 'cuda' device gets the compiled forward."""
    calls = []

    def fake_compile(fn, **kw):
        calls.append(kw)
        return lambda *a, **k: fn(*a, **k)

    monkeypatch.setattr(torch, "compile", fake_compile)

    class Net(torch.nn.Module):
        def run(self, h, t, keep=None):
            return h

    net = Net()
    on = DecodeOptions(steps=1, cuda_graphs=True)
    f1 = backbone_forward(net, on, torch.device("cuda"))
    f2 = backbone_forward(net, on, torch.device("cuda"))
    assert f1 is f2 and f1 != net.run and calls == [{"mode": "reduce-overhead", "dynamic": False}]
    assert backbone_forward(net, DecodeOptions(steps=1), torch.device("cuda")) == net.run
    assert backbone_forward(net, on, torch.device("mps")) == net.run
    import copy

    twin = copy.deepcopy(net)  # carries the cache entry along: it must compile its own forward
    assert backbone_forward(twin, on, torch.device("cuda")) is not f1 and len(calls) == 2


# ----------------------------------------------------------------------------- non-finite guard


def test_non_finite_logits_fail_with_stage_step_and_item(stage1, s2a):
    import copy

    assert issubclass(NonFiniteError, MetisError)
    prompts, lens, phones, cond = _stage1_items()
    bad = [c.clone() for c in cond]
    bad[1][0, 0] = float("inf")  # item 1's adapter input: its logits are NaN from step 1
    with pytest.raises(NonFiniteError, match=r"^stage 1: .* at step 1, batch item 1 "):
        stage1_generate(
            stage1, prompts, lens, phones, bad, DecodeOptions(steps=4), [_noise(b) for b in range(3)]
        )
    with pytest.raises(NonFiniteError, match=r"^stage 1: .* at step 1, batch item 0"):
        stage1_reference(stage1, prompts[1], lens[1], phones[1], bad[1], DecodeOptions(steps=4), _noise(0))
    broken = copy.deepcopy(s2a)
    with torch.no_grad():
        broken.to_logits[2].bias[3] = float("nan")
    sem, prompts, _ = _s2a_items()
    opts = DecodeOptions(steps=(3, 2, 2), cfg=2.5)
    with pytest.raises(NonFiniteError, match=r"^S2A \(full model\) codebook 2: .* at step 1, batch item 0"):
        s2a_generate(broken, sem, prompts, opts, [_noise(b) for b in range(3)])
    with pytest.raises(NonFiniteError, match=r"codebook 2: .* at step 1"):
        s2a_reference(broken, sem[0], prompts[0], opts, _noise(0))
    s2a_generate(s2a, sem, prompts, opts, [_noise(b) for b in range(3)])  # the intact model passes


def test_non_finite_guard_costs_one_host_sync_per_loop(stage1, monkeypatch):
    """The per-step flags stay on the device; one transfer after the loop."""
    calls = []
    orig = decoding.check_finite

    def counting(slots, stage):
        calls.append(stage)
        return orig(slots, stage)

    monkeypatch.setattr(decoding, "check_finite", counting)
    prompts, lens, phones, cond = _stage1_items()
    stage1_generate(
        stage1, prompts, lens, phones, cond, DecodeOptions(steps=5), [_noise(b) for b in range(3)]
    )
    assert calls == ["stage 1"]


# ----------------------------------------------------------------------------- device cleanliness


@pytest.mark.parametrize("static", [False, True])
def test_loops_make_no_host_sync_per_step(stage1, s2a, static):
    """On the meta device every value read on the host (`.item()`, `bool()`, `.cpu()`) raises and
    every tensor created on the CPU by mistake fails to mix: the loops run there end to end, so
    no decoding step waits for the device (the finite check after the loop is skipped there)."""
    import copy

    meta1, meta2 = copy.deepcopy(stage1).to("meta"), copy.deepcopy(s2a).to("meta")
    prompts, lens, phones, cond = _stage1_items()
    on = [p.to("meta") for p in prompts], [c.to("meta") for c in cond], [p.to("meta") for p in phones]
    opts = DecodeOptions(steps=4, cfg=2.5, static_shapes=static)
    out = stage1_generate(meta1, on[0], lens, on[2], on[1], opts, [_noise(b) for b in range(3)])
    assert [o.device.type for o in out] == ["meta"] * 3
    sem, pr, _ = _s2a_items()
    codes = s2a_generate(
        meta2,
        [x.to("meta") for x in sem],
        [x.to("meta") for x in pr],
        DecodeOptions(steps=(3, 2, 1), cfg=2.5, static_shapes=static),
        [_noise(b) for b in range(3)],
    )
    assert codes[0].device.type == "meta" and codes[0].shape == (9, 3)


# ----------------------------------------------------------------------------- on a CUDA GPU

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _agreement(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    same = sum(int((x.cpu() == y.cpu()).sum()) for x, y in zip(a, b, strict=True))
    return same / sum(x.numel() for x in a)


@pytest.mark.cuda
@needs_cuda
def test_cuda_loops_static_shapes_and_graphs(stage1, s2a):
    """fp32 with TF32 off, CPU noise copied to the GPU: static shapes give the default loop's
    tokens on CUDA too; CUDA vs CPU and CUDA graphs vs eager agree up to float rounding."""
    import copy

    from metis_cli.core.devices import apply_precision

    dev = torch.device("cuda")
    apply_precision(dev, torch.float32)
    m1, m2 = copy.deepcopy(stage1).to(dev), copy.deepcopy(s2a).to(dev)
    prompts, lens, phones, cond = _stage1_items()
    args = ([p.to(dev) for p in prompts], lens, [p.to(dev) for p in phones], [c.to(dev) for c in cond])
    opts = DecodeOptions(steps=10, cfg=2.5)

    def s1(model, a, o):
        return stage1_generate(model, *a, o, [_noise(70 + b) for b in range(3)])

    cpu = s1(stage1, (prompts, lens, phones, cond), opts)
    eager = s1(m1, args, opts)
    static = s1(m1, args, dataclasses.replace(opts, static_shapes=True))
    graphs = s1(m1, args, dataclasses.replace(opts, static_shapes=True, cuda_graphs=True))
    assert all(torch.equal(a, b) for a, b in zip(static, eager, strict=True))
    assert _agreement(eager, cpu) >= 0.9 and _agreement(graphs, eager) >= 0.9
    sem, pr, _ = _s2a_items()
    o2 = DecodeOptions(steps=(6, 3, 1), cfg=2.5, temperature=1.5)
    on = [x.to(dev) for x in sem], [x.to(dev) for x in pr]
    a = s2a_generate(m2, *on, o2, [_noise(b) for b in range(3)])
    b = s2a_generate(m2, *on, dataclasses.replace(o2, static_shapes=True), [_noise(b) for b in range(3)])
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

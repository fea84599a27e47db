"""Fused q/k/v and gate/up weights of the DiffLlama backbones (opt-in, bf16 / fp16 only).

`fuse()` concatenates each layer's q/k/v and gate/up weights once; the separate parameters
become views of the concatenation. Nothing fuses by default, and float32 / float64 refuse.
"""

from __future__ import annotations

import copy

import pytest
import torch

from metis_cli.nn.llama import DiffLlama, DiffLlamaPrefix


def _net(dtype: torch.dtype, prefix: bool = False):
    torch.manual_seed(0)
    if prefix:
        net = DiffLlamaPrefix(64, 2, 4, use_phone_cond=False)
    else:
        net = DiffLlama(64, 2, 4)
    return net.to(dtype).eval()


def _inputs(dtype: torch.dtype, B: int = 1, N: int = 13):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, N, 64, generator=g).to(dtype)
    cond = torch.randn(B, N, 64, generator=g).to(dtype)
    return x, torch.full((B,), 0.4), cond


def _state(net) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_bf16_fuses_and_is_bit_identical_to_separate_projections():
    net = _net(torch.bfloat16)
    ref = copy.deepcopy(net)  # the separate GEMMs
    before = _state(net)
    x, t, cond = _inputs(torch.bfloat16)
    with torch.inference_mode():
        want = ref(x, t, cond)
        net.fuse()
        got = net(x, t, cond)
    assert net.fuse_projections is True and ref.fuse_projections is False
    attn, mlp = net.layers[0].self_attn, net.layers[0].mlp
    assert attn.__dict__["_qkv"].shape == (192, 64) and mlp.__dict__["_gate_up"].shape == (512, 64)
    assert attn.q_proj.weight.data_ptr() == attn.__dict__["_qkv"].data_ptr()  # a view, no copy
    assert torch.equal(got, want)
    after = net.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    # padded batches too (key mask)
    x, t, cond = _inputs(torch.bfloat16, B=2, N=9)
    keep = torch.ones(2, 9)
    keep[1, 6:] = 0
    with torch.no_grad():
        assert torch.equal(net(x, t, cond, keep), ref(x, t, cond, keep))


def test_nothing_fuses_by_default_and_float32_float64_refuse():
    for dtype in (torch.bfloat16, torch.float32, torch.float64):
        net = _net(dtype, prefix=True)
        x, t, _ = _inputs(dtype)
        with torch.inference_mode():
            net(x, t)
        assert net.fuse_projections is False
        assert "_qkv" not in net.layers[0].self_attn.__dict__
        if dtype != torch.bfloat16:
            with pytest.raises(ValueError, match="reduced-precision"):
                net.fuse()


def test_fused_weights_are_dropped_when_the_parameters_change():
    net = _net(torch.bfloat16)
    x, t, cond = _inputs(torch.bfloat16)
    net.fuse()
    with torch.no_grad():
        net(x, t, cond)
    # a reload replaces the parameters: the stale concatenation must not be used
    new = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in net.state_dict().items()}
    net.load_state_dict(new, assign=True)
    ref = _net(torch.bfloat16)
    ref.load_state_dict(new, assign=True)
    with torch.no_grad():
        assert torch.equal(net(x, t, cond), ref(x, t, cond))


def test_gradients_flow_through_the_separate_projections():
    net = _net(torch.bfloat16)
    x, t, cond = _inputs(torch.bfloat16)
    net.fuse()
    net.train()
    net(x, t, cond).float().sum().backward()
    for layer in net.layers:
        for lin in (layer.self_attn.q_proj, layer.self_attn.v_proj, layer.mlp.up_proj):
            assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_wrapped_linears_are_never_fused():
    from metis_cli.assets.lora import LoraLinear

    net = _net(torch.bfloat16)
    x, t, cond = _inputs(torch.bfloat16)
    ref = copy.deepcopy(net)
    net.fuse()
    for model in (net, ref):  # an unmerged LoRA pair on q_proj of layer 0 (as in training)
        attn = model.layers[0].self_attn
        g = torch.Generator().manual_seed(2)
        a = torch.randn(4, 64, generator=g).to(torch.bfloat16)
        b = torch.randn(64, 4, generator=g).to(torch.bfloat16)
        attn.q_proj = LoraLinear(attn.q_proj, a, b, 0.5)
    with torch.no_grad():
        assert torch.equal(net(x, t, cond), ref(x, t, cond))  # the LoRA delta is not skipped
    fresh = _net(torch.bfloat16)
    fresh.layers[0].self_attn.q_proj = LoraLinear(fresh.layers[0].self_attn.q_proj, a, b, 0.5)
    fresh.fuse()
    assert "_qkv" not in fresh.layers[0].self_attn.__dict__ or fresh.layers[0].self_attn._qkv is None

"""The nn code is dtype-generic: a `.double()` module computes norms, softmax, rotary / time
tables, the mask bias, VQ distances and the iSTFT in float64 (a true float64 evaluation, which the
golden float64 rule relies on); float32 stays float32; bf16 / fp16 upcast to float32. fp16 eager
attention scales before the q k^T product, so it does not overflow where fp32 does not."""

from __future__ import annotations

import math

import pytest
import torch

from metis_cli.constants import RMS_NORM_EPS, ROPE_BASE, TIME_EMBED_MAX_PERIOD
from metis_cli.nn import acoustic_codec as ac
from metis_cli.nn import llama
from metis_cli.nn.numerics import compute_dtype
from metis_cli.nn.visual import RelPositionMultiHeadedAttention, rel_positional_encoding

F64 = torch.float64
TIGHT = 1e-12  # float64 agreement; a float32 step anywhere inside shows as >= ~1e-8


def rnd(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def test_compute_dtype():
    assert compute_dtype(torch.float32) == torch.float32
    assert compute_dtype(F64) == F64
    assert compute_dtype(torch.bfloat16) == torch.float32
    assert compute_dtype(torch.float16) == torch.float32


def test_rms_norm_in_float64():
    norm = llama.AdaptiveRMSNorm(8).double()
    x, c = rnd(2, 5, 8) * (1 + 1e-9), rnd(2, 8, seed=1)
    with torch.no_grad():
        got = norm(x, c)
        w = c @ norm.to_weight.weight.T + norm.to_weight.bias
        want = w[:, None, :] * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + RMS_NORM_EPS))
    assert got.dtype == F64 and (got - want).abs().max() < TIGHT


def test_time_sinusoid_in_float64():
    t = torch.tensor([0.123456789012345, 0.9], dtype=F64)
    got = llama.time_sinusoid(t, 16)
    k = torch.arange(8, dtype=F64)
    ang = t[:, None] * torch.exp(-k * math.log(TIME_EMBED_MAX_PERIOD) / 7)[None]
    assert got.dtype == F64 and (got - torch.cat([ang.sin(), ang.cos()], -1)).abs().max() < TIGHT
    assert llama.time_sinusoid(t.float(), 16).dtype == torch.float32


def test_rotary_tables_and_mask_bias_in_float64():
    cos, sin = llama.rotary_tables(300, 8, torch.device("cpu"), F64)
    pos = torch.arange(300, dtype=F64)[:, None]
    inv = ROPE_BASE ** (-torch.arange(0, 8, 2, dtype=F64) / 8)
    ang = torch.cat([pos * inv, pos * inv], -1)
    assert cos.dtype == F64 and sin.dtype == F64
    assert (cos - ang.cos()).abs().max() < TIGHT and (sin - ang.sin()).abs().max() < TIGHT
    bias = llama.key_padding_bias(torch.tensor([[1.0, 0.0]]), F64)
    assert bias.dtype == F64 and bias[0, 0, 0, 1] == torch.finfo(F64).min and bias[0, 0, 0, 0] == 0
    assert llama.key_padding_bias(torch.tensor([[1.0, 0.0]])).dtype == torch.float32  # the default


def test_backbone_float64_is_not_float32():
    """The float64 backbone agrees with float32 to float32 precision, and with itself run on
    inputs perturbed far below float32 resolution it moves (float32 internals would not)."""
    net = llama.DiffLlama(16, 2, 2).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        net64 = llama.DiffLlama(16, 2, 2).double().eval()
        net64.load_state_dict(net.state_dict())
        x, c, t = rnd(2, 6, 16), rnd(2, 6, 16, seed=1), torch.tensor([0.3, 0.8], dtype=F64)
        keep = torch.tensor([[1.0] * 6, [1.0] * 4 + [0.0] * 2])
        y64 = net64(x, t, c, keep)
        y32 = net(x.float(), t.float(), c.float(), keep)
        moved = (net64(x + 1e-12, t, c, keep) - y64).abs().max()
    assert y64.dtype == F64
    assert (y32.double() - y64).abs().max() < 1e-4
    assert 0 < moved < 1e-9


def test_vq_and_istft_in_float64():
    vq = ac.FactorizedVQ(6, 10, 4).double()
    with torch.no_grad():
        for p in vq.parameters():
            p.copy_(rnd(*p.shape, seed=p.numel()))
        q, idx = vq(rnd(2, 6, 5))
    assert q.dtype == F64 and idx.dtype == torch.int64
    head = ac.ISTFTHead(8, 16, 4).double()
    with torch.no_grad():
        head.out.weight.copy_(rnd(18, 8) * 0.1)
        head.out.bias.zero_()
        wav = head(rnd(1, 7, 8, seed=3))
        x = head.out(rnd(1, 7, 8, seed=3)).transpose(1, 2)
        mag, ph = torch.exp(x[:, :9]).clip(max=1e2), x[:, 9:]
        want = torch.istft(
            torch.complex(mag * ph.cos(), mag * ph.sin()),
            16,
            4,
            window=head.istft.window,  # the (float32-valued) buffer, now float64
            center=True,
        )
    assert wav.dtype == F64
    # "same" padding trims (n_fft - hop) / 2 = 6 samples, torch's centre padding n_fft / 2 = 8
    n = want.shape[-1] - 8
    assert (wav[..., 2 + 8 : 2 + n] - want[..., 8:n]).abs().max() < 1e-12


def test_visual_tables_in_float64():
    pe = rel_positional_encoding(5, 8, dtype=F64)
    r = torch.arange(4, -5, -1, dtype=F64)[:, None]
    w = torch.exp(-torch.arange(0, 8, 2, dtype=F64) * math.log(10000.0) / 8)[None]
    assert pe.dtype == F64 and (pe[:, 0::2] - (r * w).sin()).abs().max() < TIGHT


@pytest.mark.parametrize("which", ["llama", "visual"])
def test_fp16_attention_does_not_overflow(which):
    """Scores of ~1e5 before the 1/sqrt(d) scale: over fp16's 65504 unscaled, fine scaled."""
    torch.manual_seed(0)
    d, heads = 64, 1
    if which == "llama":
        attn = llama.Attention(d, heads)
    else:
        attn = RelPositionMultiHeadedAttention(d, heads)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.eye(d) if p.shape == (d, d) else torch.zeros_like(p))
        x = torch.full((1, 4, d), 40.0) + torch.randn(1, 4, d)  # q.k ~ 64 * 1600 = 1e5
        if which == "llama":
            cos, sin = llama.rotary_tables(4, d, x.device)
            ref = attn(x, cos, sin, None, "eager")
            out = attn.half()(x.half(), cos, sin, None, "eager")
        else:
            pos = rel_positional_encoding(4, d)[None] * 0
            ref = attn(x, pos)
            out = attn.half()(x.half(), pos.half())
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() <= 1e-2 * ref.abs().max()

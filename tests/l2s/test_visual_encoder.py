"""Visual encoder against the deterministic test vectors of the L2S spec (§10)."""

from __future__ import annotations

import math

import pytest
import torch

from metis_cli.assets.checkpoint import build_on_meta, load_state
from metis_cli.nn.visual import (
    VisualEncoder,
    VisualEncoderConfig,
    rel_positional_encoding,
    tiny_config,
)


def _fill(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Spec §10 fill rule for the VSR-format key `key`, rounded to float32, returned as float64."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros((), dtype=torch.int64)
    n = math.prod(shape)
    phase = (sum(map(ord, key)) % 997) / 997 * 2 * math.pi
    s = torch.sin(0.7 * torch.arange(n, dtype=torch.float64) + phase).view(shape)
    name = key.rsplit(".", 1)[-1]
    if name == "running_var":
        v = 1 + 0.25 * (s + 1)
    elif name == "running_mean":
        v = 0.1 * s
    elif len(shape) == 1 and name == "weight":
        v = 1 + 0.1 * s
    elif len(shape) == 1 or name in ("pos_bias_u", "pos_bias_v"):
        v = 0.1 * s
    else:
        v = s / math.sqrt(n / shape[0])
    return v.to(torch.float32).to(torch.float64)


@pytest.fixture(scope="module")
def spec_encoder() -> VisualEncoder:
    enc = build_on_meta(lambda: VisualEncoder(VisualEncoderConfig()))
    tensors = {k: _fill("encoder." + k, tuple(v.shape)) for k, v in enc.state_dict().items()}
    return load_state(enc, tensors, source="spec §10 fill")


@pytest.fixture(scope="module")
def spec_input() -> torch.Tensor:
    t = torch.arange(16, dtype=torch.float64)[:, None, None]
    h = torch.arange(88, dtype=torch.float64)[None, :, None]
    w = torch.arange(88, dtype=torch.float64)[None, None, :]
    return torch.sin(0.05 * (88 * h + w) + 0.3 * t)[None, None]  # (1, 1, 16, 88, 88)


def test_encoder_state_dict_matches_spec_counts() -> None:
    enc = build_on_meta(lambda: VisualEncoder(VisualEncoderConfig()))
    sd = enc.state_dict()
    assert len(sd) == 604
    # parameter counts of spec §3 (BatchNorm buffers are extra state-dict tensors)
    assert sum(p.numel() for p in enc.parameters()) == 182_028_224
    assert sum(p.numel() for p in enc.frontend.parameters()) == 11_182_784
    assert sum(p.numel() for p in enc.encoders[0].parameters()) == 14_204_160
    assert sum(1 for k in sd if k.startswith("frontend.")) == 120
    assert tuple(sd["encoders.3.conv_module.pointwise_cov1.weight"].shape) == (1536, 768, 1)
    assert tuple(sd["encoders.0.self_attn.pos_bias_u"].shape) == (12, 64)
    assert "encoders.0.self_attn.linear_pos.bias" not in sd
    assert tuple(sd["frontend.trunk.layer3.0.downsample.0.weight"].shape) == (256, 128, 1, 1)


def test_positional_table_matches_spec() -> None:
    pe = rel_positional_encoding(16, 768)
    assert pe.shape == (31, 768) and pe.dtype == torch.float32
    expected_row0 = torch.tensor([0.650287867, -0.759687901, 0.874042511, -0.485849440])
    torch.testing.assert_close(pe[0, :4], expected_row0, atol=1e-6, rtol=0)
    torch.testing.assert_close(pe[15, :4], torch.tensor([0.0, 1.0, 0.0, 1.0]), atol=1e-7, rtol=0)
    # row m is offset (T-1) - m: odd (sin) columns change sign, cos columns don't
    torch.testing.assert_close(pe[30, 0::2], -pe[0, 0::2])
    torch.testing.assert_close(pe[30, 1::2], pe[0, 1::2])


def test_spec_vectors(spec_encoder: VisualEncoder, spec_input: torch.Tensor) -> None:
    with torch.no_grad():
        front = spec_encoder.frontend(spec_input)[0]  # (16, 512)
        assert front.shape == (16, 512)
        assert front.sum().item() == pytest.approx(416.488242137, abs=1e-5)
        assert front.abs().mean().item() == pytest.approx(0.119055843, abs=1e-6)
        expected = torch.tensor([0.144106647, -0.079323303, 0.433285581, -0.056610757], dtype=torch.float64)
        torch.testing.assert_close(front[0, :4], expected, atol=1e-6, rtol=0)

        embedded = spec_encoder.embed_input(front[None])
        assert embedded.sum().item() == pytest.approx(-3376.338709867, abs=1e-5)
        pos = spec_encoder.pos_emb(16, embedded)
        assert pos.shape == (1, 31, 768) and pos.dtype == torch.float64

        out = spec_encoder(spec_input)[0]  # (16, 768)
    assert out.shape == (16, 768)
    assert out.sum().item() == pytest.approx(13.199918367, abs=1e-5)
    assert out.abs().mean().item() == pytest.approx(0.824539007, abs=1e-6)
    rows = {
        (0, 0): [-0.130957126, -0.022407440, -0.916756141, 1.486928890, -1.022293911, -0.428728485],
        (15, 762): [-0.591596426, 0.002571868, -0.459131431, 1.396824784, -0.986718816, -0.782412041],
        (7, 100): [-0.032349828, 0.987403990, -1.530557821, -0.499966624],
    }
    for (t, c), values in rows.items():
        expected = torch.tensor(values, dtype=torch.float64)
        torch.testing.assert_close(out[t, c : c + len(values)], expected, atol=1e-6, rtol=0)


def test_config_from_official_dict_and_list_fields() -> None:
    args = {
        "adim": 768,
        "aheads": 12,
        "eunits": 3072,
        "elayers": 12,
        "rel_pos_type": "latest",
        "transformer_encoder_attn_layer_type": "rel_mha",
        "macaron_style": 1,
        "use_cnn_module": 1,
        "cnn_module_kernel": 31,
        "zero_triu": False,
        "relu_type": "swish",
        "dlayers": 6,
        "mtlalpha": 0.1,
    }
    cfg = VisualEncoderConfig.from_dict(args)
    assert cfg == VisualEncoderConfig()
    assert cfg.macaron_style is True


def test_legacy_rel_pos_is_refused_not_substituted() -> None:
    cfg = VisualEncoderConfig.from_dict({"transformer_encoder_attn_layer_type": "rel_mha"})
    assert cfg.rel_pos_type == "legacy"
    with pytest.raises(ValueError, match="rel_pos_type"):
        VisualEncoder(cfg)
    with pytest.raises(ValueError, match="transformer_input_layer"):
        VisualEncoder(VisualEncoderConfig(transformer_input_layer="conv2d"))


def test_tiny_encoder_shapes_and_batch_independence() -> None:
    torch.manual_seed(0)
    enc = VisualEncoder(tiny_config())
    x = torch.randn(2, 1, 7, 88, 88)
    with torch.no_grad():
        y = enc(x)
        y0 = enc(x[:1])
        y_short = enc(x[:1, :, :5])
    assert y.shape == (2, 7, 32)
    torch.testing.assert_close(y[:1], y0, atol=1e-5, rtol=1e-5)
    # full attention over time: truncating the clip changes earlier frames too
    assert not torch.allclose(y0[:, :5], y_short, atol=1e-4)
    assert not enc.training

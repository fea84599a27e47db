"""Auto-AVSR visual encoder: 3D-conv + ResNet-18 front end, Conformer with relative MHSA.

The lip-to-speech condition of Metis (L2S spec §3-§5). Input: normalised grayscale mouth
crops (B, 1, T, 88, 88); output: the encoder after its final LayerNorm, (B, T, adim), one row
per video frame (time is never subsampled).

State-dict keys are the VSR / ESPnet names without their leading `encoder.` (spec §4.1):
`frontend.frontend3D.{0,1}`, `frontend.trunk.layer{1..4}.{0,1}.{conv1,bn1,conv2,bn2,downsample}`,
`embed.0`, `encoders.{N}.{self_attn,feed_forward,feed_forward_macaron,conv_module,norm_*}`,
`after_norm`. The loader (`metis_cli.assets.visual_checkpoint`) maps the file namings onto these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metis_cli.nn.numerics import compute_dtype

LAYER_NORM_EPS = 1e-12  # every LayerNorm of the encoder (spec §3.3)
BATCH_NORM_EPS = 1e-5  # every BatchNorm (running statistics at inference)
POS_BASE = 10_000.0  # sinusoid base of the relative positional table (spec §3.5)


@dataclass(frozen=True)
class VisualEncoderConfig:
    """Encoder options of the official ESPnet `model.json` (spec §2); defaults = LRS3_V_WER19.1.

    `frontend_width` is our extension (not in official files): channels of the 3D stem, the
    ResNet stages being (w, 2w, 4w, 8w). The official network has 64. Tiny test models use less.
    """

    adim: int = 768
    aheads: int = 12
    eunits: int = 3072
    elayers: int = 12
    cnn_module_kernel: int = 31
    transformer_input_layer: str = "conv3d"
    transformer_encoder_attn_layer_type: str = "rel_mha"
    rel_pos_type: str = "latest"
    macaron_style: bool = True
    use_cnn_module: bool = True
    zero_triu: bool = False
    relu_type: str = "swish"
    frontend_width: int = 64

    @classmethod
    def from_dict(cls, d: dict) -> VisualEncoderConfig:
        """Read the argument dict of an official model.json; unknown keys are ignored.

        A `rel_mha` config without `rel_pos_type` means ESPnet's *legacy* relative encoding,
        which is not implemented (spec §3.6): it is reported by `check`, never substituted.
        """
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if d.get("transformer_encoder_attn_layer_type", "rel_mha") == "rel_mha" and "rel_pos_type" not in d:
            kwargs["rel_pos_type"] = "legacy"
        for key in ("macaron_style", "use_cnn_module", "zero_triu"):
            if key in kwargs:
                kwargs[key] = bool(kwargs[key])
        return cls(**kwargs)

    def check(self) -> None:
        """Raise ValueError naming the first option this implementation does not support."""
        supported = {
            "transformer_input_layer": "conv3d",
            "transformer_encoder_attn_layer_type": "rel_mha",
            "rel_pos_type": "latest",
            "macaron_style": True,
            "use_cnn_module": True,
            "zero_triu": False,
            "relu_type": "swish",
        }
        for key, value in supported.items():
            if getattr(self, key) != value:
                raise ValueError(
                    f"unsupported visual encoder option {key}={getattr(self, key)!r} (need {value!r})"
                )
        if self.adim % self.aheads:
            raise ValueError(f"adim {self.adim} is not divisible by aheads {self.aheads}")
        if self.cnn_module_kernel % 2 == 0:
            raise ValueError(f"cnn_module_kernel must be odd, got {self.cnn_module_kernel}")


def tiny_config() -> VisualEncoderConfig:
    """A small random-weight configuration for tests (same structure, tiny widths)."""
    return VisualEncoderConfig(adim=32, aheads=2, eunits=64, elayers=2, cnn_module_kernel=5, frontend_width=8)


def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


# ------------------------------------------------------------------------------------------
# front end (spec §3.1)
# ------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block: y = swish(bn2(conv2(swish(bn1(conv1(x))))) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, eps=BATCH_NORM_EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=BATCH_NORM_EPS)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout, eps=BATCH_NORM_EPS)
            )

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, cin, H, W) -> (N, cout, H/stride, W/stride)."""
        shortcut = x if self.downsample is None else self.downsample(x)
        h = swish(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return swish(h + shortcut)


class ResNetTrunk(nn.Module):
    """Four stages of two basic blocks; no 2D stem (the 3D stem replaces it)."""

    def __init__(self, width: int):
        super().__init__()
        w = [width, width, 2 * width, 4 * width, 8 * width]
        self.layer1 = nn.Sequential(BasicBlock(w[0], w[1], 1), BasicBlock(w[1], w[1], 1))
        self.layer2 = nn.Sequential(BasicBlock(w[1], w[2], 2), BasicBlock(w[2], w[2], 1))
        self.layer3 = nn.Sequential(BasicBlock(w[2], w[3], 2), BasicBlock(w[3], w[3], 1))
        self.layer4 = nn.Sequential(BasicBlock(w[3], w[4], 2), BasicBlock(w[4], w[4], 1))

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, w, 22, 22) -> (N, 8w) after global average pooling."""
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 8w, 3, 3)
        return x.mean(dim=(2, 3))


class VisualFrontend(nn.Module):
    """Conv3d stem (time kernel 5, no time stride) + per-frame ResNet-18 trunk."""

    def __init__(self, width: int):
        super().__init__()
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, width, (5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(width, eps=BATCH_NORM_EPS),
        )
        self.trunk = ResNetTrunk(width)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 1, T, H, W) -> (B, T, 8w)."""
        B, _, T = x.shape[:3]
        x = swish(self.frontend3D(x))  # (B, w, T, H/2, W/2)
        x = F.max_pool3d(x, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))  # (B, w, T, H/4, W/4)
        C, H, W = x.shape[1], x.shape[3], x.shape[4]
        x = x.transpose(1, 2).reshape(B * T, C, H, W)  # (B*T, w, H/4, W/4)
        return self.trunk(x).view(B, T, -1)


# ------------------------------------------------------------------------------------------
# Conformer (spec §3.2-§3.5)
# ------------------------------------------------------------------------------------------


def rel_positional_encoding(
    T: int, dim: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Relative sinusoid table (2T-1, dim) in `dtype`; row m is offset r = (T-1) - m.

    pe[r, 2i] = sin(r * w_i), pe[r, 2i+1] = cos(r * w_i), w_i = exp(-2i ln(10000) / dim).
    Computed in float32 like upstream (spec §8) for float32 / bf16 / fp16 activations (the
    caller casts it), in float64 for a float64 evaluation.
    """
    omega = torch.exp(torch.arange(0, dim, 2, dtype=dtype, device=device) * -(math.log(POS_BASE) / dim))
    r = torch.arange(T - 1, -T, -1, dtype=dtype, device=device)  # (2T-1,) from T-1 to -(T-1)
    angle = r[:, None] * omega[None, :]  # (2T-1, dim/2)
    pe = torch.empty(2 * T - 1, dim, dtype=dtype, device=device)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe


class RelPositionMultiHeadedAttention(nn.Module):
    """Transformer-XL style self-attention with relative positions ("latest" ESPnet variant).

    score[h, i, j] = ((q_i + u_h) . k_j + (q_i + v_h) . p_{i-j}) / sqrt(d_k)
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.d_k = heads, dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.d_k))

    def forward(self, x: Tensor, pos_emb: Tensor) -> Tensor:
        """x: (B, T, D), pos_emb: (1, 2T-1, D) -> (B, T, D)."""
        B, T, D = x.shape
        H, dk = self.heads, self.d_k
        q = self.linear_q(x).view(B, T, H, dk)
        k = self.linear_k(x).view(B, T, H, dk).transpose(1, 2)  # (B, H, T, dk)
        v = self.linear_v(x).view(B, T, H, dk).transpose(1, 2)  # (B, H, T, dk)
        p = self.linear_pos(pos_emb).view(1, 2 * T - 1, H, dk).transpose(1, 2)  # (1, H, 2T-1, dk)
        q_u = (q + self.pos_bias_u).transpose(1, 2)  # (B, H, T, dk)
        q_v = (q + self.pos_bias_v).transpose(1, 2)  # (B, H, T, dk)
        fp16 = x.dtype == torch.float16
        if fp16:  # scale before the products: unscaled fp16 scores can overflow
            q_u, q_v = q_u * (1.0 / math.sqrt(dk)), q_v * (1.0 / math.sqrt(dk))
        ac = q_u @ k.transpose(-2, -1)  # (B, H, T, T) content term
        bd_raw = q_v @ p.transpose(-2, -1)  # (B, H, T, 2T-1), column m is offset (T-1) - m
        # relative shift: element [i, j] needs offset i - j, i.e. column (T-1) - i + j
        i = torch.arange(T, device=x.device)
        idx = (T - 1 - i)[:, None] + i[None, :]  # (T, T)
        bd = bd_raw.gather(-1, idx.expand(B, H, T, T))  # (B, H, T, T)
        scores = ac + bd if fp16 else (ac + bd) / math.sqrt(dk)
        attn = torch.softmax(scores, dim=-1, dtype=compute_dtype(scores.dtype)).to(scores.dtype)
        out = (attn @ v).transpose(1, 2).reshape(B, T, D)
        return self.linear_out(out)


class FeedForward(nn.Module):
    """Linear -> ReLU -> Linear (ReLU, not swish, whatever `relu_type` says)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(torch.relu(self.w_1(x)))


class ConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, BatchNorm, swish, pointwise conv (`cov` sic)."""

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.pointwise_cov1 = nn.Conv1d(dim, 2 * dim, 1)
        self.depthwise_conv = nn.Conv1d(dim, dim, kernel, padding=(kernel - 1) // 2, groups=dim)
        self.norm = nn.BatchNorm1d(dim, eps=BATCH_NORM_EPS)
        self.pointwise_cov2 = nn.Conv1d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, D) -> (B, T, D)."""
        h = F.glu(self.pointwise_cov1(x.transpose(1, 2)), dim=1)  # (B, D, T)
        h = swish(self.norm(self.depthwise_conv(h)))
        return self.pointwise_cov2(h).transpose(1, 2)


class ConformerBlock(nn.Module):
    """Macaron Conformer block, pre-norm, with a final LayerNorm."""

    def __init__(self, cfg: VisualEncoderConfig):
        super().__init__()
        d = cfg.adim
        self.self_attn = RelPositionMultiHeadedAttention(d, cfg.aheads)
        self.feed_forward = FeedForward(d, cfg.eunits)
        self.feed_forward_macaron = FeedForward(d, cfg.eunits)
        self.conv_module = ConvModule(d, cfg.cnn_module_kernel)
        self.norm_ff = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.norm_mha = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.norm_ff_macaron = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.norm_conv = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.norm_final = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor, pos_emb: Tensor) -> Tensor:
        """x: (B, T, D), pos_emb: (1, 2T-1, D) -> (B, T, D)."""
        x = x + 0.5 * self.feed_forward_macaron(self.norm_ff_macaron(x))
        x = x + self.self_attn(self.norm_mha(x), pos_emb)
        x = x + self.conv_module(self.norm_conv(x))
        x = x + 0.5 * self.feed_forward(self.norm_ff(x))
        return self.norm_final(x)


class VisualEncoder(nn.Module):
    """Front end -> Linear(8w, adim) * sqrt(adim) -> `elayers` Conformer blocks -> LayerNorm.

    Built in eval mode: BatchNorm uses its running statistics (the encoder is frozen).
    """

    def __init__(self, cfg: VisualEncoderConfig):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        self.frontend = VisualFrontend(cfg.frontend_width)
        self.embed = nn.ModuleList([nn.Linear(8 * cfg.frontend_width, cfg.adim)])
        self.encoders = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.elayers))
        self.after_norm = nn.LayerNorm(cfg.adim, eps=LAYER_NORM_EPS)
        self.eval()

    def embed_input(self, feats: Tensor) -> Tensor:
        """Front-end features (B, T, 8w) -> scaled projection (B, T, adim)."""
        return self.embed[0](feats) * math.sqrt(self.cfg.adim)

    def pos_emb(self, T: int, like: Tensor) -> Tensor:
        """Relative positional table (1, 2T-1, adim) on `like`'s device and dtype."""
        pe = rel_positional_encoding(T, self.cfg.adim, like.device, compute_dtype(like.dtype))
        return pe.to(like.dtype)[None]

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 1, T, 88, 88) normalised mouth crops -> (B, T, adim)."""
        h = self.embed_input(self.frontend(x))  # (B, T, adim)
        pos = self.pos_emb(h.shape[1], h)  # (1, 2T-1, adim)
        for block in self.encoders:
            h = block(h, pos)
        return self.after_norm(h)

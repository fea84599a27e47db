"""Stage 1: MaskGCT T2S / Metis stage 1 (spec §6).

Semantic-token masked generative model: token embeddings `cond_emb`, a [MASK] embedding,
optional phone prefix (`phone_emb` + the backbone's `cond_mlp`), optional task adapter on a
finetune condition (SSL or visual features), the DiffLlamaPrefix backbone and `to_logit`.
The decoding loop lives in `metis_cli.core.decoding`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metis_cli.constants import MLP_RATIO, PHONE_PAD_ID, PHONE_VOCAB_ROWS
from metis_cli.nn.llama import DiffLlamaPrefix, mlp
from metis_cli.nn.numerics import compute_dtype

AdapterType = Literal["none", "gated", "plain"]
FT_TYPES = (None, "tts", "vc", "tse", "se", "l2s", "omni")


@dataclass(frozen=True)
class Stage1Config:
    hidden_size: int  # H
    num_layers: int
    num_heads: int
    cond_codebook_size: int  # semantic vocabulary V
    cond_dim: int  # adapter input width (unused without adapter)
    use_phone_cond: bool = True  # phone_emb + diff_estimator.cond_mlp
    use_lora: bool = False
    lora_r: int = 0
    lora_alpha: float = 0.0
    ft_type: str | None = None  # build-time task (spec §1.3)
    adapter: AdapterType = "none"

    @classmethod
    def from_dict(cls, block: Mapping, ft_type: str | None, *, lora_path: bool | None = None) -> Stage1Config:
        """Read the official `t2s_model` block (or a whole config holding `model.t2s_model`).

        Adapter rule (spec §1.3): tts/None -> none; LoRA path -> gated; l2s or
        `use_zero_gate_adapter: false` -> plain; otherwise gated. `lora_path` defaults to the
        block's `use_lora`.
        """
        if "model" in block and "t2s_model" in block["model"]:
            block = block["model"]["t2s_model"]
        if ft_type not in FT_TYPES:
            raise ValueError(f"unknown stage-1 ft_type {ft_type!r}")
        use_lora = bool(block.get("use_lora", False))
        lora = use_lora if lora_path is None else lora_path
        if ft_type in (None, "tts"):
            adapter: AdapterType = "none"
        elif lora:
            adapter = "gated"
        elif ft_type == "l2s" or block.get("use_zero_gate_adapter", True) is False:
            adapter = "plain"
        else:
            adapter = "gated"
        return cls(
            hidden_size=int(block["hidden_size"]),
            num_layers=int(block["num_layers"]),
            num_heads=int(block["num_heads"]),
            cond_codebook_size=int(block["cond_codebook_size"]),
            cond_dim=int(block.get("cond_dim", 1024)),
            use_phone_cond=bool(block.get("use_phone_cond", True)),
            use_lora=use_lora,
            lora_r=int(block.get("lora_r", 0)),
            lora_alpha=float(block.get("lora_alpha", 0.0)),
            ft_type=ft_type,
            adapter=adapter,
        )


class GatedAdapter(nn.Module):
    """SimpleAdapter: gate_scale * out_linear(SiLU(in_linear(F)))."""

    def __init__(self, cond_dim: int, hidden: int, out: int):
        super().__init__()
        self.in_linear = nn.Linear(cond_dim, hidden)
        self.out_linear = nn.Linear(hidden, out)
        self.gate_scale = nn.Parameter(torch.empty(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.out_linear(F.silu(self.in_linear(x))) * self.gate_scale


class MetisStage1(nn.Module):
    """Keys as spec §6.1. Forward pieces are used by `sampling.stage1_generate`."""

    def __init__(self, cfg: Stage1Config, *, attn_impl: str = "eager"):
        super().__init__()
        H, V = cfg.hidden_size, cfg.cond_codebook_size
        self.cfg = cfg
        self.mask_emb = nn.Embedding(1, H)
        self.cond_emb = nn.Embedding(V, H)
        self.to_logit = nn.Linear(H, V)
        if cfg.use_phone_cond:
            self.phone_emb = nn.Embedding(PHONE_VOCAB_ROWS, H, padding_idx=PHONE_PAD_ID)
        self.diff_estimator = DiffLlamaPrefix(
            H, cfg.num_layers, cfg.num_heads, use_phone_cond=cfg.use_phone_cond, attn_impl=attn_impl
        )
        if cfg.adapter == "gated":
            self.cond_adapter = GatedAdapter(cfg.cond_dim, MLP_RATIO * H, H)
        elif cfg.adapter == "plain":
            self.cond_adapter = mlp(cfg.cond_dim, MLP_RATIO * H, H)

    @property
    def has_phones(self) -> bool:
        return hasattr(self, "phone_emb")

    @property
    def has_adapter(self) -> bool:
        return hasattr(self, "cond_adapter")

    @property
    def dtype(self) -> torch.dtype:
        return self.cond_emb.weight.dtype

    def mask_token(self) -> Tensor:
        """The [MASK] embedding (H,)."""
        return self.mask_emb.weight[0]

    def adapt(self, finetune_cond: Tensor) -> Tensor:
        """Finetune condition (..., T, cond_dim) -> adapter output (..., T, H)."""
        if not self.has_adapter:
            raise ValueError("this stage-1 model has no condition adapter")
        return self.cond_adapter(finetune_cond.to(self.dtype))

    def forward(
        self,
        xt: Tensor,
        t: Tensor,
        keep: Tensor | None = None,
        phone_ids: Tensor | None = None,
        phone_keep: Tensor | None = None,
        finetune_cond: Tensor | None = None,
    ) -> Tensor:
        """Logits (B, L, V) of the embedded input xt (B, L, H) at time t (B,).

        `finetune_cond` (B, L, cond_dim) is passed through the adapter and added to xt.
        """
        if finetune_cond is not None:
            xt = xt + self.adapt(finetune_cond)
        ph = self.phone_emb(phone_ids) if (phone_ids is not None and self.has_phones) else None
        return self.to_logit(self.diff_estimator(xt, t, keep, ph, phone_keep))


def l2s_condition(video_feat: Tensor, prompt_len: int) -> Tensor:
    """L2S finetune condition: video features (T_v, D) at 25 fps -> (prompt_len + 2 T_v, D).

    Linear ×2 upsampling along time (align_corners False), with `prompt_len` zero rows
    prepended for the prompt frames (spec §10).
    """
    x = video_feat.to(compute_dtype(video_feat.dtype)).t()[None]  # (1, D, T_v), float32 unless float64
    up = F.interpolate(x, scale_factor=2, mode="linear", align_corners=False)[0].t()  # (2 T_v, D)
    zeros = torch.zeros(prompt_len, up.shape[1], dtype=up.dtype, device=up.device)
    return torch.cat([zeros, up], dim=0)

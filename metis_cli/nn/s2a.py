"""Stage 2: MaskGCT S2A, semantic codes -> acoustic codes (spec §7).

Per-codebook token embeddings and heads, a layer-index embedding, the semantic condition
embedding `cond_emb` and the DiffLlama backbone (additive condition). The decoding loop
lives in `metis_cli.core.decoding`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metis_cli.nn.llama import DiffLlama

# The official files hold an empty (0, 256) `embed_tokens` leftover (spec §5.6): accepted, never required.
S2A_TOLERATED_EXTRA = ("diff_estimator.embed_tokens.weight",)


@dataclass(frozen=True)
class S2AConfig:
    num_quantizer: int  # Q, codebooks held by the model
    hidden_size: int
    num_layers: int
    num_heads: int
    codebook_size: int  # acoustic vocabulary per codebook
    cond_codebook_size: int  # semantic vocabulary
    cond_dim: int = 1024  # read but unused (cond_mlp is H -> 4H -> H)
    predict_layer_1: bool = True  # training only
    mask_layer_schedule: str = "linear"  # training only
    cfg_scale: float = 0.15  # training only (prompt-drop probability)

    @classmethod
    def from_dict(cls, block: Mapping) -> S2AConfig:
        """Read the official S2A config block (unknown keys ignored)."""
        return cls(
            num_quantizer=int(block["num_quantizer"]),
            hidden_size=int(block["hidden_size"]),
            num_layers=int(block["num_layers"]),
            num_heads=int(block["num_heads"]),
            codebook_size=int(block["codebook_size"]),
            cond_codebook_size=int(block["cond_codebook_size"]),
            cond_dim=int(block.get("cond_dim", 1024)),
            predict_layer_1=bool(block.get("predict_layer_1", True)),
            mask_layer_schedule=str(block.get("mask_layer_schedule", "linear")),
            cfg_scale=float(block.get("cfg_scale", 0.15)),
        )


class MaskGCTS2A(nn.Module):
    """Keys as spec §7.1 (without the empty `diff_estimator.embed_tokens.weight`)."""

    def __init__(self, cfg: S2AConfig, *, attn_impl: str = "eager"):
        super().__init__()
        H, Q = cfg.hidden_size, cfg.num_quantizer
        self.cfg = cfg
        self.layer_emb = nn.Embedding(Q, H)
        self.mask_emb = nn.Embedding(1, H)
        self.token_emb = nn.ModuleList(nn.Embedding(cfg.codebook_size, H) for _ in range(Q))
        self.to_logits = nn.ModuleList(nn.Linear(H, cfg.codebook_size) for _ in range(Q))
        self.cond_emb = nn.Embedding(cfg.cond_codebook_size, H)
        self.diff_estimator = DiffLlama(H, cfg.num_layers, cfg.num_heads, attn_impl=attn_impl)

    @property
    def num_quantizer(self) -> int:
        return self.cfg.num_quantizer

    @property
    def dtype(self) -> torch.dtype:
        return self.cond_emb.weight.dtype

    def mask_token(self) -> Tensor:
        """The [MASK] embedding (H,)."""
        return self.mask_emb.weight[0]

    def embed_codes(self, codes: Tensor) -> Tensor:
        """Sum of token embeddings of codes (..., T, g), layers 0..g-1 in order -> (..., T, H)."""
        out = self.token_emb[0](codes[..., 0])
        for q in range(1, codes.shape[-1]):
            out = out + self.token_emb[q](codes[..., q])
        return out

    def layer_cond(self, semantic: Tensor, layer: int) -> Tensor:
        """cond_emb(semantic) + layer_emb[layer]: (..., T) -> (..., T, H)."""
        return self.cond_emb(semantic) + self.layer_emb.weight[layer]

    def forward(self, xt: Tensor, t: Tensor, cond: Tensor, layer: int, keep: Tensor | None = None) -> Tensor:
        """Logits (B, L, codebook) of codebook `layer` for embedded input xt (B, L, H).

        `cond` (B, L, H) is the (layer-conditioned) semantic condition, t (B,).
        """
        return self.to_logits[layer](self.diff_estimator(xt, t, cond, keep))

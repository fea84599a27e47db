"""Semantic codec (RepCodec, spec §3): SSL features (B, T, hidden) <-> one codebook of tokens.

File `semantic_codec/model.safetensors`, keys `encoder.*`, `decoder.*`,
`quantizer.quantizers.0.*` (239 tensors at full size). One factorized VQ stage, no
down-sampling. Metis only uses `quantize` (the codes); `decoder` is loaded but unused there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from metis_cli.nn.acoustic_codec import ResidualVQ, config_kwargs
from metis_cli.nn.convnext import ConvNeXtBackbone


@dataclass(frozen=True)
class SemanticCodecConfig:
    """`semantic_codec` block (official key names)."""

    codebook_size: int
    hidden_size: int
    codebook_dim: int
    vocos_dim: int
    vocos_intermediate_dim: int
    vocos_num_layers: int

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SemanticCodecConfig:
        return cls(**config_kwargs(cls, d, "semantic_codec"))


class SemanticCodec(nn.Module):
    """RepCodec: ConvNeXt encoder -> single factorized VQ stage -> ConvNeXt decoder."""

    def __init__(self, cfg: SemanticCodecConfig):
        super().__init__()
        self.cfg = cfg
        H, D = cfg.hidden_size, cfg.vocos_dim

        def coder() -> nn.Sequential:  # (B, H, T) -> (B, T, H)
            return nn.Sequential(
                ConvNeXtBackbone(H, D, cfg.vocos_intermediate_dim, cfg.vocos_num_layers),
                nn.Linear(D, H),
            )

        self.encoder = coder()
        self.decoder = coder()
        self.quantizer = ResidualVQ(H, 1, cfg.codebook_size, cfg.codebook_dim)  # one l2-normalised stage

    def encode(self, feat: Tensor) -> Tensor:
        """feat: (B, T, H) -> quantizer input (B, H, T)."""
        x = feat.to(self.encoder[1].weight.dtype).transpose(1, 2)
        return self.encoder(x).transpose(1, 2)

    def quantize(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        """feat: (B, T, H) normalised SSL features -> (codes (B, T) int64, quantized (B, T, H))."""
        quantized, codes = self.quantizer(self.encode(feat))  # (B, H, T), (1, B, T)
        return codes[0], quantized.transpose(1, 2)

    def forward(self, feat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """feat: (B, T, H) -> (reconstruction (B, T, H), codebook loss 0 (scalar), codes (1, B, T))."""
        quantized, codes = self.quantizer(self.encode(feat))
        x_rec = self.decoder(quantized)  # (B, T, H)
        return x_rec, torch.zeros((), dtype=x_rec.dtype, device=x_rec.device), codes

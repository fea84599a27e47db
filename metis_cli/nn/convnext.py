"""ConvNeXt backbone (Vocos style) shared by the semantic and the acoustic codec (spec §3, §4.3).

Keys: `embed`, `norm`, `convnext.{i}.{dwconv,norm,pwconv1,pwconv2,gamma}`, `final_layer_norm`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metis_cli.constants import CODEC_LAYER_NORM_EPS


class ConvNeXtBlock(nn.Module):
    """Depthwise conv -> LayerNorm -> Linear -> GELU -> Linear -> layer scale, plus residual."""

    def __init__(self, dim: int, intermediate_dim: int):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=CODEC_LAYER_NORM_EPS)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.empty(dim))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, T) -> (B, C, T)."""
        h = self.dwconv(x).transpose(1, 2)  # (B, T, C)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))  # exact (erf) GELU
        h = self.gamma * h
        return x + h.transpose(1, 2)


class ConvNeXtBackbone(nn.Module):
    """Conv embedding, LayerNorm, `num_layers` ConvNeXt blocks, final LayerNorm.

    Maps (B, input_channels, T) to (B, T, dim).
    """

    def __init__(self, input_channels: int, dim: int, intermediate_dim: int, num_layers: int):
        super().__init__()
        self.embed = nn.Conv1d(input_channels, dim, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(dim, eps=CODEC_LAYER_NORM_EPS)
        self.convnext = nn.ModuleList(ConvNeXtBlock(dim, intermediate_dim) for _ in range(num_layers))
        self.final_layer_norm = nn.LayerNorm(dim, eps=CODEC_LAYER_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, input_channels, T) in the weights' dtype -> (B, T, dim)."""
        x = self.embed(x)  # (B, dim, T)
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        for block in self.convnext:
            x = block(x)
        return self.final_layer_norm(x.transpose(1, 2))  # (B, T, dim)

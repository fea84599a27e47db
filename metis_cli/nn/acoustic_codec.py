"""Acoustic codec (spec §4): `CodecEncoder`, factorized residual VQ and the Vocos `CodecDecoder`.

Files: `acoustic_codec/model.safetensors` (encoder, keys `block.*`) and
`acoustic_codec/model_1.safetensors` (decoder incl. quantizer, keys `quantizer.*`, `model.*`).
24 kHz audio, hop 480 samples (50 frames/s), 12 codebooks. Metis stores acoustic codes as
(B, T, 12); the quantizer works stage-major (12, B, T).

Reference mode is float32. With bf16 / fp16 weights (opt-in fast modes) the modules run in the
weights' dtype, but the VQ distance/argmin and the iSTFT head after the linear layer are
computed in float32; a float64 model computes them in float64 (`numerics.compute_dtype`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metis_cli.constants import NUM_ACOUSTIC_CODEBOOKS
from metis_cli.errors import CheckpointError, MetisError
from metis_cli.nn.convnext import ConvNeXtBackbone
from metis_cli.nn.numerics import REDUCED_PRECISION, compute_dtype

ISTFT_WINDOW_KEY = "model.head.istft.window"


def config_kwargs(cls: type, d: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The official keys of block `d` that `cls` (a config dataclass) knows; lists -> tuples.

    Unknown keys are ignored; a missing key without a default raises MetisError.
    """
    out = {f.name: d[f.name] for f in fields(cls) if f.name in d}
    out = {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}
    missing = [f.name for f in fields(cls) if f.name not in out and f.default is MISSING]
    if missing:
        raise MetisError(f"{where}: missing config key(s): {', '.join(missing)}")
    return out


# --- configs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodecEncoderConfig:
    """`acoustic_codec.encoder` block (official key names)."""

    d_model: int = 64
    up_ratios: tuple[int, ...] = (4, 5, 5, 6)
    out_channels: int = 256
    use_tanh: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CodecEncoderConfig:
        return cls(**config_kwargs(cls, d, "acoustic_codec.encoder"))


@dataclass(frozen=True)
class CodecDecoderConfig:
    """`acoustic_codec.decoder` block (official key names).

    The official decoder reads `in_channels` (default 256); base.json's `in_channel` key is
    ignored by it, and so it is here (golden README, Surprise 2).
    """

    in_channels: int = 256
    num_quantizers: int = NUM_ACOUSTIC_CODEBOOKS
    codebook_size: int = 1024
    codebook_dim: int = 8
    quantizer_type: str = "fvq"
    use_l2_normlize: bool = True
    use_vocos: bool = True
    vocos_dim: int = 512
    vocos_intermediate_dim: int = 4096
    vocos_num_layers: int = 30
    n_fft: int = 1920
    hop_size: int = 480
    padding: str = "same"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CodecDecoderConfig:
        cfg = cls(**config_kwargs(cls, d, "acoustic_codec.decoder"))
        where = "acoustic_codec.decoder"
        if cfg.quantizer_type != "fvq":
            raise MetisError(f"{where}: quantizer_type {cfg.quantizer_type!r} not supported (only 'fvq')")
        if not cfg.use_vocos:
            raise MetisError(f"{where}: use_vocos false is not supported (the Metis decoder is Vocos)")
        if cfg.padding != "same":
            raise MetisError(f"{where}: padding {cfg.padding!r} not supported (only 'same')")
        if (cfg.n_fft - cfg.hop_size) % 2:
            raise MetisError(f"{where}: n_fft - hop_size must be even for 'same' padding")
        return cfg


@dataclass(frozen=True)
class AcousticCodecConfig:
    """The `acoustic_codec` block of base.json: {"encoder": {...}, "decoder": {...}}."""

    encoder: CodecEncoderConfig
    decoder: CodecDecoderConfig

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AcousticCodecConfig:
        for part in ("encoder", "decoder"):
            if part not in d:
                raise MetisError(f"acoustic_codec: missing config block {part!r}")
        return cls(CodecEncoderConfig.from_dict(d["encoder"]), CodecDecoderConfig.from_dict(d["decoder"]))


# --- building blocks -----------------------------------------------------------------------


class WNConv1d(nn.Module):
    """Conv1d with classic weight norm: weight = g * v / ||v|| (norm over all dims but 0).

    Keys `weight_g` (out, 1, 1), `weight_v` (out, in/groups, k), `bias` (out).
    """

    def __init__(
        self, cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1
    ):
        super().__init__()
        self.weight_g = nn.Parameter(torch.empty(cout, 1, 1))
        self.weight_v = nn.Parameter(torch.empty(cout, cin, kernel_size))
        self.bias = nn.Parameter(torch.empty(cout))
        self.stride, self.padding, self.dilation = stride, padding, dilation

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, cin, L) -> (B, cout, L')."""
        weight = torch._weight_norm(self.weight_v, self.weight_g, 0)
        return F.conv1d(x, weight, self.bias, self.stride, self.padding, self.dilation)


class Snake(nn.Module):
    """y = x + sin(alpha x)^2 / (alpha + 1e-9), per-channel alpha (1, C, 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.empty(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class ResidualUnit(nn.Module):
    """Snake, dilated conv k7, Snake, conv k1; plus the input. (B, C, L) -> (B, C, L)."""

    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake(dim),
            WNConv1d(dim, dim, 7, dilation=dilation, padding=3 * dilation),
            Snake(dim),
            WNConv1d(dim, dim, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class EncoderBlock(nn.Module):
    """Three residual units at dim/2 (dilations 1, 3, 9), Snake, strided conv dim/2 -> dim."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        half = dim // 2
        self.block = nn.Sequential(
            ResidualUnit(half, 1),
            ResidualUnit(half, 3),
            ResidualUnit(half, 9),
            Snake(half),
            WNConv1d(half, dim, 2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class CodecEncoder(nn.Module):
    """Waveform (B, 1, N) at 24 kHz -> latents (B, out_channels, T), T ~ N / prod(up_ratios)."""

    def __init__(self, cfg: CodecEncoderConfig):
        super().__init__()
        self.cfg = cfg
        width = cfg.d_model
        layers: list[nn.Module] = [WNConv1d(1, width, 7, padding=3)]
        for stride in cfg.up_ratios:
            width *= 2
            layers.append(EncoderBlock(width, stride))
        layers += [Snake(width), WNConv1d(width, cfg.out_channels, 3, padding=1)]
        self.block = nn.Sequential(*layers)

    def forward(self, wav: Tensor) -> Tensor:
        """wav: (B, 1, N) -> (B, out_channels, T) in the weights' dtype."""
        z = self.block(wav.to(self.block[0].weight_v.dtype))
        return torch.tanh(z) if self.cfg.use_tanh else z


# --- quantizer -----------------------------------------------------------------------------


class FactorizedVQ(nn.Module):
    """One factorized VQ stage: project to codebook_dim, nearest (l2-normalised) codeword, project back."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int, use_l2_normlize: bool = True):
        super().__init__()
        self.in_project = WNConv1d(input_dim, codebook_dim, 1)
        self.out_project = WNConv1d(codebook_dim, input_dim, 1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)
        self.use_l2_normlize = use_l2_normlize

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z: (B, D, T) -> (quantized (B, D, T), indices (B, T) int64)."""
        z_e = self.in_project(z)  # (B, d, T)
        B, d, T = z_e.shape
        cdt = compute_dtype(z_e.dtype)  # distances in float32 (float64 in a float64 evaluation)
        enc = z_e.transpose(1, 2).reshape(B * T, d).to(cdt)
        book = self.codebook.weight.to(cdt)  # (K, d)
        if self.use_l2_normlize:
            enc = F.normalize(enc, dim=1)
            book = F.normalize(book, dim=1)
        dist = enc.pow(2).sum(1, keepdim=True) - 2 * enc @ book.t() + book.pow(2).sum(1, keepdim=True).t()
        indices = (-dist).max(1)[1].view(B, T)  # (B, T)
        z_q = self.codebook(indices).transpose(1, 2)  # raw (un-normalised) rows, (B, d, T)
        z_q = z_e + (z_q - z_e)  # the official straight-through arithmetic
        return self.out_project(z_q), indices

    def vq2emb(self, codes: Tensor) -> Tensor:
        """codes: (B, T) -> (B, D, T)."""
        return self.out_project(self.codebook(codes).transpose(1, 2))


class ResidualVQ(nn.Module):
    """Residual VQ over `num_quantizers` factorized stages (inference: all stages)."""

    def __init__(
        self,
        input_dim: int,
        num_quantizers: int,
        codebook_size: int,
        codebook_dim: int,
        use_l2_normlize: bool = True,
    ):
        super().__init__()
        self.quantizers = nn.ModuleList(
            FactorizedVQ(input_dim, codebook_size, codebook_dim, use_l2_normlize)
            for _ in range(num_quantizers)
        )

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z: (B, D, T) -> (quantized (B, D, T), codes (Q, B, T) int64)."""
        z = z.to(self.quantizers[0].codebook.weight.dtype)
        quantized: Tensor | float = 0.0
        residual = z
        codes = []
        for q in self.quantizers:
            z_q, idx = q(residual)
            quantized = quantized + z_q
            residual = residual - z_q
            codes.append(idx)
        return quantized, torch.stack(codes)

    def vq2emb(self, codes: Tensor, n_quantizers: int | None = None) -> Tensor:
        """codes: (Q', B, T) -> sum of the first `n_quantizers` stages' embeddings (B, D, T)."""
        n = codes.shape[0] if n_quantizers is None else min(n_quantizers, codes.shape[0])
        if n > len(self.quantizers):
            raise ValueError(f"vq2emb: {n} codebooks given, the quantizer has {len(self.quantizers)}")
        out: Tensor | float = 0.0
        for k in range(n):
            out = out + self.quantizers[k].vq2emb(codes[k])
        return out


# --- Vocos decoder -------------------------------------------------------------------------


class ISTFT(nn.Module):
    """Inverse STFT with "same" padding; holds the official persistent `window` buffer (n_fft)."""

    def __init__(self, n_fft: int, hop_length: int):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        # persistent, as in the official files; own storage (safetensors refuses views)
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True).clone())

    def forward(self, spec: Tensor) -> Tensor:
        """spec: complex (B, n_fft//2 + 1, T) -> waveform (B, T * hop_length).

        float32 for a complex64 spec, float64 for complex128."""
        n_fft, hop = self.n_fft, self.hop_length
        pad = (n_fft - hop) // 2
        window = self.window.to(spec.device)  # the CPU fallback of an MPS model (ISTFTHead)
        if window.dtype in REDUCED_PRECISION:  # fast modes: never use a rounded window
            window = torch.hann_window(n_fft, periodic=True, dtype=torch.float32, device=window.device)
        T = spec.shape[-1]
        frames = torch.fft.irfft(spec, n_fft, dim=1, norm="backward") * window[None, :, None]  # (B, n_fft, T)
        length = (T - 1) * hop + n_fft
        fold = dict(output_size=(1, length), kernel_size=(1, n_fft), stride=(1, hop))
        y = F.fold(frames, **fold)[:, 0, 0, pad:-pad]  # overlap-add, trimmed (B, T * hop)
        env = window.square()[None, :, None].expand(1, n_fft, T)
        env = F.fold(env, **fold)[0, 0, 0, pad:-pad]  # (T * hop,)
        return y / env


class ISTFTHead(nn.Module):
    """Linear to log-magnitude and phase, then iSTFT: (B, T, dim) -> (B, T * hop) float32."""

    def __init__(self, dim: int, n_fft: int, hop_length: int):
        super().__init__()
        self.out = nn.Linear(dim, n_fft + 2)
        self.istft = ISTFT(n_fft, hop_length)

    def forward(self, x: Tensor) -> Tensor:
        x = self.out(x).transpose(1, 2)
        x = x.to(compute_dtype(x.dtype))  # (B, n_fft + 2, T), float32 unless float64
        dev = x.device
        if dev.type == "mps":  # complex / irfft on MPS: macOS 14 only, known silent bugs (devices.py)
            x = x.cpu()
        logmag, phase = x.chunk(2, dim=1)  # (B, n_fft/2 + 1, T) each
        mag = torch.exp(logmag).clip(max=1e2)
        spec = torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))
        return self.istft(spec).to(dev)


class Vocos(nn.Module):
    """`model` of the decoder: ConvNeXt `backbone` + iSTFT `head`."""

    def __init__(self, cfg: CodecDecoderConfig):
        super().__init__()
        self.backbone = ConvNeXtBackbone(
            cfg.in_channels, cfg.vocos_dim, cfg.vocos_intermediate_dim, cfg.vocos_num_layers
        )
        self.head = ISTFTHead(cfg.vocos_dim, cfg.n_fft, cfg.hop_size)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_channels, T) -> (B, T * hop) float32."""
        return self.head(self.backbone(x))


class CodecDecoder(nn.Module):
    """Quantizer (`quantizer`) and Vocos decoder (`model`): latents (B, 256, T) -> (B, 1, T*hop)."""

    def __init__(self, cfg: CodecDecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.quantizer = ResidualVQ(
            cfg.in_channels, cfg.num_quantizers, cfg.codebook_size, cfg.codebook_dim, cfg.use_l2_normlize
        )
        self.model = Vocos(cfg)

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z: (B, D, T) encoder output -> (quantized (B, D, T), codes (Q, B, T) int64)."""
        return self.quantizer(z)

    def vq2emb(self, codes: Tensor, n_quantizers: int | None = None) -> Tensor:
        """codes: (Q, B, T) -> (B, D, T), summing the first `n_quantizers` (default all given)."""
        return self.quantizer.vq2emb(codes, n_quantizers)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, D, T) quantized latents -> waveform (B, 1, T * hop) float32."""
        x = x.to(self.model.backbone.embed.weight.dtype)
        return self.model(x).unsqueeze(1)


# --- helpers used by the tokenizer ---------------------------------------------------------


def check_istft_window(decoder: nn.Module | Mapping[str, Tensor], source: str) -> None:
    """Raise CheckpointError unless the decoder's iSTFT window is a periodic Hann window.

    `decoder` is a loaded CodecDecoder or its tensors (`model.head.istft.window`, (n_fft,)).
    """
    state = decoder.state_dict() if isinstance(decoder, nn.Module) else decoder
    if ISTFT_WINDOW_KEY not in state:
        raise CheckpointError(f"{source}: missing key {ISTFT_WINDOW_KEY}")
    w = state[ISTFT_WINDOW_KEY]
    if w.is_meta:
        raise CheckpointError(f"{source}: {ISTFT_WINDOW_KEY} was not loaded")
    if w.dim() != 1:
        raise CheckpointError(f"{source}: {ISTFT_WINDOW_KEY} has shape {list(w.shape)}, expected (n_fft,)")
    ref = torch.hann_window(w.numel(), periodic=True, dtype=torch.float64)
    atol = max(1e-6, torch.finfo(w.dtype).eps) if w.is_floating_point() else 1e-6
    diff = (w.detach().cpu().double() - ref).abs().max().item()
    if not diff <= atol:
        raise CheckpointError(
            f"{source}: {ISTFT_WINDOW_KEY} is not a periodic Hann window of length {w.numel()} "
            f"(max abs diff {diff:.3g})"
        )


@torch.no_grad()
def wav_to_codes(encoder: CodecEncoder, decoder: CodecDecoder, wav: Tensor) -> Tensor:
    """wav: (B, N) float32 at 24 kHz -> acoustic codes (B, T, Q) int64 (Metis layout)."""
    z = encoder(wav.unsqueeze(1))  # (B, D, T)
    _, codes = decoder.quantize(z)  # (Q, B, T)
    return codes.permute(1, 2, 0)


@torch.no_grad()
def codes_to_wav(decoder: CodecDecoder, codes: Tensor) -> Tensor:
    """codes: (B, T, Q) int64 -> waveform (B, T * hop) float32 at 24 kHz."""
    emb = decoder.vq2emb(codes.permute(2, 0, 1))  # (B, D, T)
    return decoder(emb)[:, 0]

"""Golden checks of the two codecs (golden README, "How to check a case" and "Codecs").

Every stage is checked from its stored upstream tensor; every `out.*` tensor of a case must be
produced (an unknown one fails). Weights go through the real loading path:
`build_on_meta` + strict `load_state`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from metis_cli.assets.checkpoint import build_on_meta, load_state
from metis_cli.nn.acoustic_codec import (
    AcousticCodecConfig,
    CodecDecoder,
    CodecEncoder,
    check_istft_window,
    codes_to_wav,
    wav_to_codes,
)
from metis_cli.nn.semantic_codec import SemanticCodec, SemanticCodecConfig
from tests.golden.cases import Case, assert_close, cases_where

SEMANTIC = cases_where(lambda kind: kind == "semantic_codec")
ACOUSTIC = cases_where(lambda kind: kind == "acoustic_codec")


def _load(factory: Callable[[], torch.nn.Module], case: Case, file: str) -> torch.nn.Module:
    module = build_on_meta(factory)
    load_state(module, case.tensors(file), source=str(case.path / file))
    return module.eval()


def _check_outputs(case: Case, produce: dict[str, Callable[[], Tensor]]) -> None:
    """Compare every `out.*` of the case (and the `mid.*` we can produce) with our results."""
    io = case.io
    unknown = sorted(k for k in io if k.startswith("out.") and k not in produce)
    assert not unknown, f"{case}: outputs this test cannot produce: {unknown}"
    checked = [k for k in io if k in produce]
    with torch.no_grad():
        for key in checked:
            assert_close(produce[key](), io[key], what=f"{case} {key}")
    assert any(k.startswith("out.") for k in checked), f"{case}: no out.* tensor in io.safetensors"


if SEMANTIC:

    @pytest.mark.parametrize("case", SEMANTIC, ids=str)
    def test_semantic_codec(case: Case) -> None:
        cfg = SemanticCodecConfig.from_dict(case.config)
        codec = _load(lambda: SemanticCodec(cfg), case, "weights.safetensors")
        io = case.io
        feat, enc = io["in.feat"], io["mid.encoder_out"]  # (B, T, H), (B, H, T)
        assert feat.shape[-1] == cfg.hidden_size
        vq = {}

        def quantizer() -> tuple[Tensor, Tensor]:  # the stage, from the stored encoder output
            if not vq:
                vq["q"], vq["codes"] = codec.quantizer(enc)  # (B, H, T), (1, B, T)
            return vq["q"], vq["codes"]

        produce = {
            "mid.encoder_out": lambda: codec.encode(feat),
            "out.codes": lambda: quantizer()[1][0],
            "out.quantized": lambda: quantizer()[0].transpose(1, 2),
            "out.forward_x_rec": lambda: codec.decoder(io["out.quantized"].transpose(1, 2)),
            "out.forward_codebook_loss": lambda: codec(feat)[1],
            "out.forward_indices": lambda: quantizer()[1],
        }
        _check_outputs(case, produce)

    @pytest.mark.parametrize("case", SEMANTIC, ids=str)
    def test_semantic_codec_public_calls(case: Case) -> None:
        """`quantize` and `forward` end to end from the features (what the tokenizer calls)."""
        cfg = SemanticCodecConfig.from_dict(case.config)
        codec = _load(lambda: SemanticCodec(cfg), case, "weights.safetensors")
        io = case.io
        with torch.no_grad():
            codes, quantized = codec.quantize(io["in.feat"])
            x_rec, loss, indices = codec(io["in.feat"])
        assert codes.dtype == torch.int64
        assert_close(codes, io["out.codes"], what="quantize codes")
        assert_close(quantized, io["out.quantized"], what="quantize quantized")
        assert_close(indices, io["out.forward_indices"], what="forward indices")
        assert_close(x_rec, io["out.forward_x_rec"], what="forward x_rec")
        assert loss.shape == () and loss.item() == 0.0


if ACOUSTIC:

    def _acoustic(case: Case) -> tuple[AcousticCodecConfig, CodecEncoder, CodecDecoder]:
        cfg = AcousticCodecConfig.from_dict(case.config)
        encoder = _load(lambda: CodecEncoder(cfg.encoder), case, "encoder.safetensors")
        decoder = _load(lambda: CodecDecoder(cfg.decoder), case, "decoder.safetensors")
        return cfg, encoder, decoder

    @pytest.mark.parametrize("case", ACOUSTIC, ids=str)
    def test_acoustic_codec(case: Case) -> None:
        cfg, encoder, decoder = _acoustic(case)
        check_istft_window(decoder, str(case.path / "decoder.safetensors"))
        io = case.io
        enc = io["mid.encoder_out"]  # (B, D, T)
        assert enc.shape[1] == cfg.encoder.out_channels == cfg.decoder.in_channels
        vq = {}

        def quantizer() -> tuple[Tensor, Tensor]:  # the stage, from the stored encoder output
            if not vq:
                vq["q"], vq["codes"] = decoder.quantize(enc)  # (B, D, T), (Q, B, T)
            return vq["q"], vq["codes"]

        stored_codes = io["out.acoustic_code"].permute(2, 0, 1)  # (Q, B, T)
        produce = {
            "mid.encoder_out": lambda: encoder(io["in.wav"].unsqueeze(1)),
            "out.quantized_out": lambda: quantizer()[0],
            "out.codes": lambda: quantizer()[1],
            "out.acoustic_code": lambda: quantizer()[1].permute(1, 2, 0),
            "out.vq2emb": lambda: decoder.vq2emb(stored_codes, n_quantizers=cfg.decoder.num_quantizers),
            "mid.decoder_backbone_out": lambda: decoder.model.backbone(io["out.vq2emb"]),
            "out.decoded_wav": lambda: decoder(io["out.vq2emb"]),
            "out.decoded_wav_from_quantized": lambda: decoder(io["out.quantized_out"]),
        }
        for key in io:  # out.vq2emb_nq<N>: the first N quantizers
            m = re.fullmatch(r"out\.vq2emb_nq(\d+)", key)
            if m:
                produce[key] = lambda n=int(m.group(1)): decoder.vq2emb(stored_codes, n_quantizers=n)
        _check_outputs(case, produce)
        assert io["out.codes"].shape[0] == cfg.decoder.num_quantizers

    @pytest.mark.parametrize("case", ACOUSTIC, ids=str)
    def test_acoustic_codec_public_calls(case: Case) -> None:
        """`wav_to_codes` / `codes_to_wav` (what the tokenizer calls), end to end."""
        cfg, encoder, decoder = _acoustic(case)
        io = case.io
        codes = wav_to_codes(encoder, decoder, io["in.wav"])  # (B, T, Q)
        assert codes.dtype == torch.int64
        assert_close(codes, io["out.acoustic_code"], what="wav_to_codes")
        wav = codes_to_wav(decoder, io["out.acoustic_code"])  # (B, T * hop)
        assert wav.dtype == torch.float32
        assert wav.shape[-1] == io["out.acoustic_code"].shape[1] * cfg.decoder.hop_size
        assert_close(wav, io["out.decoded_wav"][:, 0], what="codes_to_wav")

"""Codec modules beyond the goldens: frame arithmetic at full size (meta device), the iSTFT
window check, config parsing, and the opt-in bf16 fast mode."""

from __future__ import annotations

import pytest
import torch

from metis_cli.assets.checkpoint import build_on_meta, load_state
from metis_cli.constants import CODEC_MIN_SAMPLES, HOP_SAMPLES
from metis_cli.errors import CheckpointError, MetisError
from metis_cli.nn.acoustic_codec import (
    ISTFT_WINDOW_KEY,
    AcousticCodecConfig,
    CodecDecoder,
    CodecDecoderConfig,
    CodecEncoder,
    check_istft_window,
    codes_to_wav,
    wav_to_codes,
)
from metis_cli.nn.semantic_codec import SemanticCodec, SemanticCodecConfig
from tests.golden.cases import Case, cases_where
from tests.nn.full_size import FULL_SIZE_CONFIGS

FULL = AcousticCodecConfig.from_dict(FULL_SIZE_CONFIGS["acoustic_codec"])
ACOUSTIC = cases_where(lambda kind: kind == "acoustic_codec")
SEMANTIC = cases_where(lambda kind: kind == "semantic_codec")


# spec §4.5: 24 kHz samples -> acoustic frames of the official examples; §1 constants
@pytest.mark.parametrize(
    "samples,frames",
    [(302_400, 630), (96_000, 200), (188_664, 393), (105_614, 220), (240_000, 500), (CODEC_MIN_SAMPLES, 1)],
)
def test_encoder_frame_count_full_size(samples: int, frames: int) -> None:
    encoder = build_on_meta(lambda: CodecEncoder(FULL.encoder))
    z = encoder(torch.empty(1, 1, samples, device="meta"))
    assert tuple(z.shape) == (1, FULL.encoder.out_channels, frames)


def test_decoder_output_length_full_size() -> None:
    decoder = build_on_meta(lambda: CodecDecoder(FULL.decoder))
    wav = decoder(torch.empty(2, FULL.decoder.in_channels, 7, device="meta"))
    assert tuple(wav.shape) == (2, 1, 7 * HOP_SAMPLES) and FULL.decoder.hop_size == HOP_SAMPLES


def test_istft_window_check() -> None:
    n = FULL.decoder.n_fft
    good = {ISTFT_WINDOW_KEY: torch.hann_window(n, periodic=True)}
    check_istft_window(good, "dec.safetensors")
    for bad in (torch.hann_window(n, periodic=False), torch.ones(n)):
        with pytest.raises(CheckpointError, match=r"^dec\.safetensors: .*periodic Hann"):
            check_istft_window({ISTFT_WINDOW_KEY: bad}, "dec.safetensors")
    with pytest.raises(CheckpointError, match="missing key"):
        check_istft_window({}, "dec.safetensors")
    unloaded = build_on_meta(lambda: CodecDecoder(FULL.decoder))
    with pytest.raises(CheckpointError, match="not loaded"):
        check_istft_window(unloaded, "dec.safetensors")


def test_config_parsing() -> None:
    block = dict(FULL_SIZE_CONFIGS["acoustic_codec"]["decoder"], in_channel=999, something_new=1)
    assert CodecDecoderConfig.from_dict(block).in_channels == 256  # `in_channel` is ignored, as official
    assert FULL.encoder.up_ratios == (3, 4, 5, 8)
    with pytest.raises(MetisError, match="padding"):
        CodecDecoderConfig.from_dict(dict(block, padding="center"))
    sem = dict(FULL_SIZE_CONFIGS["semantic_codec"])
    del sem["codebook_dim"]
    with pytest.raises(MetisError, match="semantic_codec: missing config key.*codebook_dim"):
        SemanticCodecConfig.from_dict(sem)
    with pytest.raises(MetisError, match="decoder"):
        AcousticCodecConfig.from_dict({"encoder": {}})


if ACOUSTIC:

    @pytest.mark.parametrize("case", ACOUSTIC, ids=str)
    def test_acoustic_bf16_fast_mode(case: Case) -> None:
        """bf16 weights run; iSTFT output is float32 and close to the reference waveform."""
        cfg = AcousticCodecConfig.from_dict(case.config)
        encoder = build_on_meta(lambda: CodecEncoder(cfg.encoder))
        decoder = build_on_meta(lambda: CodecDecoder(cfg.decoder))
        for m, file in ((encoder, "encoder.safetensors"), (decoder, "decoder.safetensors")):
            load_state(m.eval(), case.tensors(file), source=file, dtype=torch.bfloat16)
        io = case.io
        codes = wav_to_codes(encoder, decoder, io["in.wav"])
        assert codes.dtype == torch.int64 and codes.shape == io["out.acoustic_code"].shape
        # the first stage sees the least accumulated rounding
        assert torch.equal(codes[..., 0], io["out.acoustic_code"][..., 0])
        wav = codes_to_wav(decoder, io["out.acoustic_code"])
        ref = io["out.decoded_wav"][:, 0]
        assert wav.dtype == torch.float32 and wav.shape == ref.shape
        assert (wav - ref).abs().max() <= 0.05 * ref.abs().max()


if SEMANTIC:

    @pytest.mark.parametrize("case", SEMANTIC, ids=str)
    def test_semantic_bf16_fast_mode(case: Case) -> None:
        codec = build_on_meta(lambda: SemanticCodec(SemanticCodecConfig.from_dict(case.config)))
        load_state(codec, case.tensors("weights.safetensors"), source="w", dtype=torch.bfloat16)
        with torch.no_grad():
            codes, quantized = codec.eval().quantize(case.io["in.feat"])
        assert codes.dtype == torch.int64 and codes.shape == case.io["out.codes"].shape
        assert quantized.dtype == torch.bfloat16 and torch.isfinite(quantized.float()).all()
        assert (codes == case.io["out.codes"]).float().mean() >= 0.5

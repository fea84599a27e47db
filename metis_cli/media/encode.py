"""Whole-file audio encoders, in memory: a (N,) float32 waveform → the bytes of one format.

Formats (the OpenAI speech API's names and content types): wav, flac and pcm (raw s16le)
through libsndfile; mp3, opus (in Ogg) and aac (ADTS) through PyAV (FFmpeg), so every
installation with PyAV writes all six. wav, flac and pcm carry the same 16-bit samples the
CLI's WAV writer stores (`pcm16`).
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from metis_cli.constants import CODEC_SAMPLE_RATE
from metis_cli.errors import AudioError

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
# PyAV formats: response format -> (container, codec, bit rate)
AV_CODECS = {
    "mp3": ("mp3", "libmp3lame", 64_000),
    "opus": ("ogg", "libopus", 32_000),
    "aac": ("adts", "aac", 64_000),
}


def extension(fmt: str) -> str:
    """The file name extension of a format (pcm: raw)."""
    return "raw" if fmt == "pcm" else fmt


def available() -> tuple[str, ...]:
    """The formats this installation encodes (mp3/opus/aac need PyAV)."""
    try:
        import av  # noqa: F401
    except ImportError:  # pragma: no cover - av comes with the serve extra
        return ("flac", "wav", "pcm")
    return FORMATS


def pcm16(wav: np.ndarray, sample_rate: int = CODEC_SAMPLE_RATE) -> np.ndarray:
    """(N,) int16: the samples the WAV writer (and the CLI) stores for a float waveform."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(wav, np.float32), sample_rate, format="RAW", subtype="PCM_16", endian="LITTLE")
    return np.frombuffer(buf.getvalue(), "<i2")


def encode(wav: np.ndarray, fmt: str, sample_rate: int = CODEC_SAMPLE_RATE) -> bytes:
    """The waveform ((N,) float32, mono) as a whole file of format `fmt` (one of FORMATS)."""
    if fmt in AV_CODECS:
        return encode_av(pcm16(wav, sample_rate), fmt, sample_rate)
    if fmt == "pcm":
        return pcm16(wav, sample_rate).tobytes()
    if fmt not in ("wav", "flac"):
        raise AudioError(f"response format: must be one of {', '.join(FORMATS)} (got {fmt!r})")
    buf = io.BytesIO()
    sf.write(buf, pcm16(wav, sample_rate), sample_rate, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()


def encode_av(samples: np.ndarray, fmt: str, sample_rate: int = CODEC_SAMPLE_RATE) -> bytes:
    """(N,) int16 mono samples as an mp3, Ogg Opus or ADTS AAC file, through PyAV."""
    import av

    container_name, codec, bit_rate = AV_CODECS[fmt]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container_name) as out:
        stream = out.add_stream(codec, rate=sample_rate, layout="mono")
        stream.bit_rate = bit_rate
        pcm = np.ascontiguousarray(samples, np.int16)[None, :]  # (1, N): one packed channel
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


__all__ = ["CONTENT_TYPES", "FORMATS", "available", "encode", "encode_av", "extension", "pcm16"]

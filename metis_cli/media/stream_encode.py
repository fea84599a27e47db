"""Incremental audio encoders for streamed responses: fed (N,) float32 blocks, they return bytes.

    enc = stream_encoder("mp3")          # pcm, wav, mp3, opus, aac (flac: see STREAMABLE)
    out = enc.feed(block) ... + enc.finish()

pcm is raw s16le at 24 kHz mono, with exactly the 16-bit samples the file writers store (the
float → int16 conversion of libsndfile, sample by sample, so blocks concatenate to the samples
of the unstreamed file). wav is the same samples behind a RIFF header whose sizes are the
"unknown length" value 0xFFFFFFFF (players read to the end of the stream). mp3, opus (in Ogg,
48 kHz, pages of 20 ms so each block leaves at once) and aac (ADTS) go through PyAV's
encoders; a lossy encoder holds back a few milliseconds (its frame size and look-ahead) until
the next block or `finish`.
"""

from __future__ import annotations

import io
import struct
from typing import Protocol

import numpy as np
import soundfile as sf

from metis_cli.constants import CODEC_SAMPLE_RATE
from metis_cli.errors import InputError
from metis_cli.media.encode import AV_CODECS, CONTENT_TYPES

STREAMABLE = ("pcm", "wav", "mp3", "opus", "aac")
MEDIA_TYPES = {fmt: CONTENT_TYPES[fmt] for fmt in STREAMABLE}  # the whole files' content types
UNKNOWN_SIZE = 0xFFFFFFFF
AV_RATES = {"opus": 48_000}  # codec sample rates other than 24 kHz
AV_OPTIONS = {"opus": {"page_duration": "20000"}}  # Ogg pages of 20 ms: each block leaves at once


class StreamEncoder(Protocol):
    media_type: str

    def feed(self, block: np.ndarray) -> bytes:
        """The bytes ready after this (N,) float32 block (may be empty)."""
        ...

    def finish(self) -> bytes:
        """The remaining bytes; the encoder is done."""
        ...


def pcm16_bytes(block: np.ndarray, sample_rate: int = CODEC_SAMPLE_RATE) -> bytes:
    """(N,) float32 → s16le bytes, converted as the WAV/PCM file writers convert."""
    data = np.asarray(block, dtype=np.float32)
    if data.shape[0] == 0:
        return b""
    buf = io.BytesIO()
    sf.write(buf, data, sample_rate, format="RAW", subtype="PCM_16", endian="LITTLE")
    return buf.getvalue()


def wav_stream_header(sample_rate: int = CODEC_SAMPLE_RATE, channels: int = 1) -> bytes:
    """A 44-byte PCM-16 WAV header for a stream of unknown length (RIFF and data sizes 0xFFFFFFFF)."""
    block_align = 2 * channels
    return (
        b"RIFF"
        + struct.pack("<I", UNKNOWN_SIZE)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, 16)
        + b"data"
        + struct.pack("<I", UNKNOWN_SIZE)
    )


class PcmEncoder:
    """Raw s16le (`header`: prefixed with a streaming WAV header)."""

    def __init__(self, header: bool = False, sample_rate: int = CODEC_SAMPLE_RATE) -> None:
        self.sample_rate = sample_rate
        self.media_type = MEDIA_TYPES["wav" if header else "pcm"]
        self._pending = wav_stream_header(sample_rate) if header else b""

    def feed(self, block: np.ndarray) -> bytes:
        out, self._pending = self._pending + pcm16_bytes(block, self.sample_rate), b""
        return out

    def finish(self) -> bytes:
        out, self._pending = self._pending, b""
        return out


class _Sink:
    """A write-only file for PyAV: collects what the muxer writes until it is taken."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


class AvEncoder:
    """mp3 / opus / aac through PyAV, one container kept open for the whole stream."""

    def __init__(self, fmt: str, sample_rate: int = CODEC_SAMPLE_RATE) -> None:
        import av

        container_fmt, codec, bit_rate = AV_CODECS[fmt]
        self.media_type = MEDIA_TYPES[fmt]
        self.sample_rate = sample_rate
        self._av = av
        self._sink = _Sink()
        options = AV_OPTIONS.get(fmt, {})
        self._container = av.open(self._sink, mode="w", format=container_fmt, options=options)
        self._stream = self._container.add_stream(codec, rate=AV_RATES.get(fmt, CODEC_SAMPLE_RATE))
        self._stream.layout = "mono"
        self._stream.bit_rate = bit_rate
        self._pts = 0

    def _mux(self, frame: object) -> bytes:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()

    def feed(self, block: np.ndarray) -> bytes:
        data = np.ascontiguousarray(np.asarray(block, dtype=np.float32)[None, :])
        if data.shape[1] == 0:
            return b""
        frame = self._av.AudioFrame.from_ndarray(data, format="flt", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += data.shape[1]
        return self._mux(frame)

    def finish(self) -> bytes:
        out = self._mux(None)
        self._container.close()
        return out + self._sink.take()


def stream_encoder(fmt: str, sample_rate: int = CODEC_SAMPLE_RATE) -> StreamEncoder:
    """An incremental encoder for `fmt` (one of STREAMABLE); InputError naming the format else."""
    if fmt == "pcm":
        return PcmEncoder(False, sample_rate)
    if fmt == "wav":
        return PcmEncoder(True, sample_rate)
    if fmt in AV_CODECS:
        return AvEncoder(fmt, sample_rate)
    raise InputError(f"response_format: {fmt!r} cannot be streamed (streamable: {', '.join(STREAMABLE)})")

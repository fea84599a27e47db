"""Incremental encoders of streamed responses (`media.stream_encode`): every format decodes back."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import soundfile as sf

from metis_cli.errors import InputError
from metis_cli.media.stream_encode import STREAMABLE, pcm16_bytes, stream_encoder
from tests.conftest import speechlike

SR = 24_000


def _blocks() -> list[np.ndarray]:
    wav = speechlike(2.0, seed=3)
    return [wav[:7000], wav[7000:7000], wav[7000:30_000], wav[30_000:]]


def _encode(fmt: str) -> tuple[bytes, list[bytes]]:
    enc = stream_encoder(fmt)
    parts = [enc.feed(b) for b in _blocks()]
    parts.append(enc.finish())
    return b"".join(parts), parts


def test_pcm_and_wav_carry_the_file_writers_samples():
    wav = np.concatenate(_blocks())
    ref = io.BytesIO()
    sf.write(ref, wav, SR, format="WAV", subtype="PCM_16")
    ref_samples = sf.read(io.BytesIO(ref.getvalue()), dtype="int16")[0]
    pcm, parts = _encode("pcm")
    assert parts[0] and parts[1] == b""  # bytes leave with each block
    assert np.array_equal(np.frombuffer(pcm, "<i2"), ref_samples)
    streamed, parts = _encode("wav")
    assert streamed[:4] == b"RIFF" and streamed[4:8] == b"\xff\xff\xff\xff" and len(parts[0]) > 44
    samples, rate = sf.read(io.BytesIO(streamed), dtype="int16")
    assert rate == SR and np.array_equal(samples, ref_samples)
    assert pcm16_bytes(np.zeros(0, np.float32)) == b""


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac"])
def test_lossy_streams_decode_back_with_their_length(fmt):
    data, parts = _encode(fmt)
    assert sum(1 for p in parts[:-1] if p) >= 2  # bytes left before the end
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray() for f in container.decode(audio=0)]
        rate = container.streams.audio[0].rate
    n = sum(f.shape[-1] for f in frames)
    want = 2.0 * rate
    assert want <= n <= want + 0.2 * rate  # encoder padding only
    out = np.concatenate([f.reshape(-1) for f in frames])
    assert np.abs(out).max() > 0.05  # not silence


def test_unstreamable_format_is_named():
    with pytest.raises(InputError, match="'flac' cannot be streamed"):
        stream_encoder("flac")
    assert set(STREAMABLE) == {"pcm", "wav", "mp3", "opus", "aac"}

"""Audio in and out of the service, in memory: no temporary files, no shell-outs.

`decode_upload` reads an upload's bytes with soundfile (WAV, FLAC, OGG, MP3, ...) or, for
containers libsndfile does not read (WebM/Opus from a browser's MediaRecorder, M4A/AAC, MP4),
with PyAV, into an `audio.AudioArray` at its native rate: the engine then reads it exactly as
it reads a file (`audio.load_audio`). `encode` turns a 24 kHz waveform into the bytes of a
response format (`metis_cli.media.encode`).
"""

from __future__ import annotations

import io
import re

import numpy as np
import soundfile as sf

from metis_cli.constants import CODEC_SAMPLE_RATE
from metis_cli.errors import AudioError
from metis_cli.media import encode as encode_formats
from metis_cli.media.audio import AudioArray, pcm_to_float32


def response_formats() -> tuple[str, ...]:
    """The response formats this installation encodes (`media.encode`: all six with PyAV)."""
    return encode_formats.available()


def media_type(fmt: str) -> str:
    """The content type of a response format (the OpenAI API's)."""
    return encode_formats.CONTENT_TYPES[fmt]


def encode(wav: np.ndarray, fmt: str, sample_rate: int = CODEC_SAMPLE_RATE) -> bytes:
    """The waveform as a whole file of format `fmt` (`media.encode.encode`)."""
    return encode_formats.encode(wav, fmt, sample_rate)


extension = encode_formats.extension


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    return re.sub(r"^Error opening <[^>]*>: ", "", text)  # soundfile names the BytesIO object


def _decode_av(data: bytes, name: str, sf_reason: str) -> AudioArray:
    try:
        import av
    except ImportError:  # pragma: no cover - av is installed with the test/video extras
        raise AudioError(f"{name}: unreadable or unsupported audio format ({sf_reason})") from None
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except Exception:  # noqa: BLE001 - FFmpeg errors of every kind become one line
        raise AudioError(f"{name}: unreadable or unsupported audio format ({sf_reason})") from None
    try:
        streams = container.streams.audio
        if not streams:
            raise AudioError(f"{name}: no audio stream in this upload")
        stream = streams[0]
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        blocks = []
        for frame in container.decode(stream):
            if frame.sample_rate != rate:
                raise AudioError(f"{name}: sample rate changes inside the stream")
            arr = frame.to_ndarray()
            if frame.format.is_planar:
                block = arr.T
            else:
                block = arr.reshape(-1, frame.layout.nb_channels)
            blocks.append(pcm_to_float32(np.ascontiguousarray(block), name))
    except AudioError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt data mid-stream
        raise AudioError(f"{name}: cannot decode audio ({_first_line(exc)})") from None
    finally:
        container.close()
    if not blocks or rate <= 0:
        raise AudioError(f"{name}: audio has zero samples")
    return AudioArray(np.concatenate(blocks), rate, name)


def decode_upload(data: bytes, name: str) -> AudioArray:
    """An upload's audio, decoded in memory. Raises a one-line AudioError naming `name`."""
    if not data:
        raise AudioError(f"{name}: empty upload (0 bytes)")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        arr = AudioArray(samples, int(rate), name)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        arr = _decode_av(data, name, _first_line(exc))
    if arr.samples.shape[0] == 0:
        raise AudioError(f"{name}: audio has zero samples")
    if not np.isfinite(arr.samples).all():
        raise AudioError(f"{name}: audio contains non-finite samples (NaN or Inf)")
    return arr


def seconds(arr: AudioArray) -> float:
    return arr.samples.shape[0] / arr.sample_rate

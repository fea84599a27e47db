"""Audio in and out of the service, in memory: no temporary files, no shell-outs.

`decode_upload` reads an upload's bytes with soundfile (WAV, FLAC, OGG, MP3, ...) or, for
containers libsndfile does not read (WebM/Opus from a browser's MediaRecorder, M4A/AAC, MP4),
with PyAV, into an `audio.AudioArray` at its native rate: the engine then reads it exactly as
it reads a file (`audio.load_audio`). `encode` turns a 24 kHz waveform into the bytes of a
response format.
"""

from __future__ import annotations

import io
import re

import numpy as np
import soundfile as sf

from metis_cli.constants import CODEC_SAMPLE_RATE
from metis_cli.errors import AudioError
from metis_cli.media.audio import AudioArray, pcm_to_float32, writable_formats

# response_format -> (libsndfile format, subtype, media type); pcm: raw s16le, 24 kHz mono
_ENCODERS = {
    "wav": ("WAV", "PCM_16", "audio/wav"),
    "flac": ("FLAC", "PCM_16", "audio/flac"),
    "pcm": ("RAW", "PCM_16", "audio/pcm"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
    "opus": ("OGG", "OPUS", "audio/ogg"),
}


def response_formats() -> tuple[str, ...]:
    """The response formats this installation can encode (mp3/opus only where libsndfile writes them)."""
    can = set(writable_formats())
    return tuple(f for f in _ENCODERS if f in ("wav", "flac", "pcm") or f in can)


def media_type(fmt: str) -> str:
    return _ENCODERS[fmt][2]


def extension(fmt: str) -> str:
    """The file name extension of a response format (pcm: raw)."""
    return "raw" if fmt == "pcm" else fmt


def encode(wav: np.ndarray, fmt: str, sample_rate: int = CODEC_SAMPLE_RATE) -> bytes:
    """The waveform as a file of format `fmt` (see `response_formats`), PCM 16 where the format has PCM."""
    fmt_name, subtype, _ = _ENCODERS[fmt]
    data = np.asarray(wav, dtype=np.float32)
    if fmt == "flac":  # libsndfile's FLAC rounds floats differently: take the WAV's 16-bit samples
        data = _pcm16(data, sample_rate)
    buf = io.BytesIO()
    extra = {"endian": "LITTLE"} if fmt_name == "RAW" else {}
    sf.write(buf, data, sample_rate, format=fmt_name, subtype=subtype, **extra)
    return buf.getvalue()


def _pcm16(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """The int16 samples the WAV writer (and the CLI) stores for a float waveform."""
    buf = io.BytesIO()
    sf.write(buf, wav, sample_rate, format="RAW", subtype="PCM_16", endian="LITTLE")
    return np.frombuffer(buf.getvalue(), "<i2")


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

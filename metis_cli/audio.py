"""Audio reading, resampling and atomic writing (spec §1.1, §12).

Reading reproduces ``librosa.load(path, sr=sr)`` with its defaults bit for bit, without
importing librosa: soundfile read as float32 (int16 PCM -> value / 32768), channel mean to
mono, soxr resampling at "HQ" quality (librosa's default ``soxr_hq``), then zero-pad or trim to
exactly ``ceil(n_in * sr_out / sr_in)`` samples. Equal rates are returned untouched.

Writing uses soundfile's default WAV subtype (PCM_16) and never leaves a partial file: data go
to a temporary file in the destination directory, which is renamed over the target only on
success.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from pathlib import Path
from types import TracebackType

import numpy as np
import soundfile as sf
import soxr

from metis_cli.constants import CODEC_SAMPLE_RATE
from metis_cli.errors import AudioError

log = logging.getLogger(__name__)

SOXR_QUALITY = "soxr_hq"  # librosa's default res_type; soxr maps it to its "HQ" recipe


def resampled_length(n_in: int, sr_in: int, sr_out: int) -> int:
    """Number of samples librosa keeps after resampling: ``ceil(n_in * sr_out / sr_in)``.

    Computed as librosa does (float ratio, then ``ceil``) so that rounding agrees exactly.
    """
    ratio = float(sr_out) / sr_in
    return int(math.ceil(n_in * ratio))


def resample(wav: np.ndarray, sr_in: int, sr_out: int, name: str = "<array>") -> np.ndarray:
    """Resample a mono float32 waveform like ``librosa.resample(..., res_type="soxr_hq")``.

    Args:
        wav: ``(N,)`` float32 samples at ``sr_in`` Hz.
        sr_in, sr_out: sample rates in Hz (positive integers).
        name: how to name the input in error messages.

    Returns:
        ``(ceil(N * sr_out / sr_in),)`` float32 at ``sr_out`` Hz; ``wav`` itself when the rates
        are equal.
    """
    if sr_in <= 0 or sr_out <= 0:
        raise AudioError(f"{name}: sample rates must be positive (got {sr_in} -> {sr_out})")
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise AudioError(f"{name}: expected a mono (N,) waveform, got shape {tuple(wav.shape)}")
    if wav.dtype != np.float32:
        wav = wav.astype(np.float32)
    if sr_in == sr_out:
        return wav
    if wav.shape[0] == 0:
        raise AudioError(f"{name}: no samples to resample")
    n_out = resampled_length(wav.shape[0], sr_in, sr_out)
    out = soxr.resample(np.ascontiguousarray(wav), sr_in, sr_out, quality=SOXR_QUALITY)
    if out.shape[0] > n_out:
        out = out[:n_out]
    elif out.shape[0] < n_out:
        out = np.pad(out, (0, n_out - out.shape[0]), mode="constant")
    return np.asarray(out, dtype=np.float32)


def _read_float32(path: Path) -> tuple[np.ndarray, int]:
    """Read all frames as float32, transposed to ``(channels, N)`` or ``(N,)`` like librosa."""
    if not path.exists():
        raise AudioError(f"{path}: no such audio file")
    if not path.is_file():
        raise AudioError(f"{path}: not a regular file")
    try:
        with sf.SoundFile(str(path)) as f:
            sr = int(f.samplerate)
            data = f.read(frames=-1, dtype="float32", always_2d=False).T
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AudioError(f"{path}: unreadable or unsupported audio format ({detail})") from None
    return data, sr


def load_audio(path: str | os.PathLike, sr: int) -> np.ndarray:
    """Load an audio file as mono float32 at ``sr`` Hz, bit-identical to ``librosa.load``.

    Args:
        path: any file soundfile can read (WAV, FLAC, OGG, ...).
        sr: target sample rate in Hz.

    Returns:
        ``(N,)`` float32 samples in [-1, 1] for PCM input.

    Raises:
        AudioError: missing/unreadable file, zero samples, or non-finite samples.
    """
    path = Path(path)
    data, sr_native = _read_float32(path)
    if data.ndim > 1:
        data = np.mean(data, axis=tuple(range(data.ndim - 1)))
    if data.shape[-1] == 0:
        raise AudioError(f"{path}: audio file has zero samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: audio contains non-finite samples (NaN or Inf)")
    out = resample(data, sr_native, sr, name=str(path))
    log.debug("loaded %s: %d Hz -> %d Hz, %d samples", path, sr_native, sr, out.shape[0])
    return out


def _check_wav(wav: np.ndarray, path: Path) -> np.ndarray:
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise AudioError(f"{path}: expected a mono (N,) waveform to write, got shape {tuple(wav.shape)}")
    if not np.isfinite(wav).all():
        raise AudioError(f"{path}: refusing to write non-finite samples")
    return wav


class AtomicWavWriter:
    """Stream mono blocks into a WAV file that appears only when the writer closes cleanly.

    Usage::

        with AtomicWavWriter("out.wav", sr=24000) as w:
            for block in blocks:          # each (n,) float32
                w.write(block)

    Blocks go to a hidden temporary file in the target directory; on normal exit it is closed,
    flushed to disk and renamed over ``path`` (``os.replace``). On an exception the temporary
    file is deleted and any previous ``path`` is left untouched.
    """

    def __init__(self, path: str | os.PathLike, sr: int = CODEC_SAMPLE_RATE, subtype: str | None = None):
        self.path = Path(path)
        self.sr = int(sr)
        self.subtype = subtype  # None = soundfile's WAV default (PCM_16)
        self.frames_written = 0
        self._tmp: Path | None = None
        self._file: sf.SoundFile | None = None

    def __enter__(self) -> AtomicWavWriter:
        directory = self.path.parent if str(self.path.parent) else Path(".")
        if not directory.is_dir():
            raise AudioError(f"{self.path}: output directory does not exist")
        # soundfile creates the file itself, so it gets the usual umask permissions
        tmp = directory / f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
        self._tmp = tmp
        try:
            self._file = sf.SoundFile(
                str(tmp), mode="x", samplerate=self.sr, channels=1, format="WAV", subtype=self.subtype
            )
        except Exception:
            self._discard()
            raise
        return self

    def write(self, block: np.ndarray) -> None:
        """Append ``(n,)`` float32 samples."""
        if self._file is None:
            raise RuntimeError("AtomicWavWriter.write called outside its context")
        block = _check_wav(block, self.path)
        self._file.write(block)
        self.frames_written += block.shape[0]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            assert self._file is not None and self._tmp is not None
            self._file.close()
            self._file = None
            with open(self._tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self._tmp, self.path)
            self._tmp = None
        except BaseException:
            self._discard()
            raise
        log.debug("wrote %s (%d samples at %d Hz)", self.path, self.frames_written, self.sr)

    def _discard(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # the file is being thrown away anyway
                pass
            self._file = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


def write_wav_atomic(path: str | os.PathLike, wav: np.ndarray, sr: int = CODEC_SAMPLE_RATE) -> Path:
    """Write a mono ``(N,)`` float32 waveform as a PCM_16 WAV, atomically.

    Returns:
        The written path. On any failure no partial file exists and a previous file is intact.
    """
    path = Path(path)
    wav = _check_wav(wav, path)
    with AtomicWavWriter(path, sr=sr) as w:
        w.write(wav)
    return path

"""Audio reading, resampling and atomic writing (spec §1.1, §12).

Reading reproduces ``librosa.load(path, sr=sr)`` with its defaults bit for bit, without
importing librosa: soundfile read as float32 (int16 PCM -> value / 32768), channel mean to
mono, soxr resampling at "HQ" quality (librosa's default ``soxr_hq``), then zero-pad or trim to
exactly ``ceil(n_in * sr_out / sr_in)`` samples. Equal rates are returned untouched.
Containers that libsndfile cannot read (``.m4a``/AAC, ``.mp4``, ``.webm``/Opus, ...) are
decoded with PyAV (FFmpeg) at their native rate and then go through the same mixing and
resampling. In-memory audio is an `AudioArray` (samples + sample rate), accepted wherever a
path is.

Writing (`write_audio_atomic`, `AtomicWavWriter`) produces the format the file extension names
(`output_format`: wav, flac, ogg, opus, mp3, aiff; PCM_16 where the format has PCM) and never
leaves a partial file: data go to a short hidden temporary file in the destination directory,
renamed over the target only on success and removed on any failure, including
KeyboardInterrupt / SystemExit (see `cleanup_on_signal` for SIGTERM). Write failures (full
filesystem, name too long, no permission) are one-line `OutputError`s naming the output.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import math
import os
import re
import signal
import socket
import stat
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Union

import numpy as np
import soundfile as sf
import soxr

from metis_cli.constants import CODEC_SAMPLE_RATE
from metis_cli.errors import AudioError, InputError, OutputError

log = logging.getLogger(__name__)

SOXR_QUALITY = "soxr_hq"  # librosa's default res_type; soxr maps it to its "HQ" recipe


@dataclass(frozen=True)
class AudioArray:
    """Audio already in memory: ``(N,)`` or ``(N, channels)`` samples at ``sample_rate`` Hz.

    Floating samples are taken as they are (nominally in [-1, 1]); int16 / int32 samples are
    scaled like PCM files (value / 32768, value / 2**31). ``name`` names it in error messages.
    """

    samples: np.ndarray
    sample_rate: int
    name: str = "<array>"

    def __str__(self) -> str:
        return self.name


AudioSource = Union[str, os.PathLike, AudioArray]


def source_name(source: AudioSource) -> str:
    """How a source is named in messages: the path as given, or the array's name."""
    return source.name if isinstance(source, AudioArray) else str(source)


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


# -- reading -----------------------------------------------------------------------------------

_SF_ERRORS = (sf.LibsndfileError, RuntimeError, TypeError, ValueError)
MAX_CHANNELS = 64  # an (N, C) array with more columns than this is taken to be (C, N): refused


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_file(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: no such audio file")
    if not path.is_file():
        raise AudioError(f"{path}: not a regular file")


def pcm_to_float32(x: np.ndarray, name: str) -> np.ndarray:
    """Samples of any common dtype as float32, scaled like libsndfile's PCM reads."""
    if x.dtype == np.float32:
        return x
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    if x.dtype == np.int16:
        return x.astype(np.float32) / np.float32(32768.0)
    if x.dtype == np.int32:
        return (x.astype(np.float64) / 2147483648.0).astype(np.float32)
    if x.dtype == np.uint8:
        return (x.astype(np.float32) - np.float32(128.0)) / np.float32(128.0)
    raise AudioError(f"{name}: unsupported sample type {x.dtype} (use float32, float64, int16 or int32)")


def _array_frames(a: AudioArray) -> np.ndarray:
    """``(N, C)`` float32 samples of an AudioArray, validated."""
    name = a.name
    try:
        sr = int(a.sample_rate)
    except (TypeError, ValueError):
        raise AudioError(f"{name}: sample_rate must be a positive integer, got {a.sample_rate!r}") from None
    if sr <= 0 or sr != a.sample_rate:
        raise AudioError(f"{name}: sample_rate must be a positive integer, got {a.sample_rate!r}")
    x = np.asarray(a.samples)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] < 1 or x.shape[1] > MAX_CHANNELS:
        raise AudioError(
            f"{name}: expected samples of shape (N,) or (N, channels), got {tuple(np.shape(a.samples))}"
        )
    return pcm_to_float32(x, name)


def _av_to_float32(frame, name: str) -> np.ndarray:
    """One decoded PyAV audio frame as ``(n, C)`` float32."""
    arr = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if frame.format.is_planar:
        data = arr.T  # (C, n) -> (n, C)
    else:
        data = arr.reshape(-1, channels)  # (1, n*C) interleaved -> (n, C)
    return pcm_to_float32(np.ascontiguousarray(data), name)


class _AvDecoder:
    """Sequential decoding of a file's first audio stream with PyAV (FFmpeg)."""

    def __init__(
        self, path: Path | io.BytesIO, unreadable: str | None = None, name: str | None = None
    ) -> None:
        """path: a file, or the bytes of one (in memory); unreadable: the reason to give when
        FFmpeg cannot open it either; name: how to name it in messages (default: the path)."""
        self.path = name if name is not None else path
        try:
            import av
        except ImportError as exc:  # pragma: no cover - av is a dependency
            raise AudioError(f"{self.path}: unsupported audio format (PyAV not installed: {exc})") from None
        self._av = av
        try:
            self.container = av.open(path if isinstance(path, io.BytesIO) else str(path))
        except Exception as exc:  # noqa: BLE001 - FFmpeg errors of every kind: one line
            reason = unreadable or _first_line(exc)
            raise AudioError(f"{self.path}: unreadable or unsupported audio format ({reason})") from None
        streams = self.container.streams.audio
        if not streams:
            self.container.close()
            raise AudioError(f"{self.path}: no audio stream in this file")
        self.stream = streams[0]
        self.sample_rate = int(self.stream.codec_context.sample_rate or self.stream.rate or 0)
        self.channels = int(self.stream.codec_context.channels or 0)

    def blocks(self) -> Iterator[np.ndarray]:
        """``(n, C)`` float32 blocks in order."""
        try:
            for frame in self.container.decode(self.stream):
                if frame.sample_rate != self.sample_rate:
                    raise AudioError(
                        f"{self.path}: sample rate changes inside the stream "
                        f"({self.sample_rate} -> {frame.sample_rate} Hz)"
                    )
                block = _av_to_float32(frame, str(self.path))
                if self.channels == 0:
                    self.channels = block.shape[1]
                yield block
        except AudioError:
            raise
        except Exception as exc:  # noqa: BLE001 - corrupt data mid-stream
            raise AudioError(f"{self.path}: cannot decode audio ({_first_line(exc)})") from None

    def close(self) -> None:
        self.container.close()


def _read_frames(path: Path) -> tuple[np.ndarray, int]:
    """All frames of a file as ``(N, C)`` float32 and the native rate (soundfile, else PyAV)."""
    _check_file(path)
    try:
        with sf.SoundFile(str(path)) as f:
            sr = int(f.samplerate)
            data = f.read(frames=-1, dtype="float32", always_2d=True)
        return data, sr
    except _SF_ERRORS as exc:
        sf_detail = _first_line(exc)
    dec = _AvDecoder(path, unreadable=sf_detail)
    try:
        blocks = list(dec.blocks())
    finally:
        dec.close()
    channels = blocks[0].shape[1] if blocks else max(dec.channels, 1)
    data = np.concatenate(blocks) if blocks else np.zeros((0, channels), np.float32)
    log.debug("decoded %s with PyAV (%s, %d Hz)", path, dec.stream.codec_context.name, dec.sample_rate)
    return data, dec.sample_rate


def decode_bytes(data: bytes, name: str = "<upload>") -> AudioArray:
    """Decode the bytes of an audio file in memory (no temporary file) into an `AudioArray`.

    The same decoders as for files (libsndfile, else PyAV/FFmpeg): ``load_audio`` of the
    result equals ``load_audio`` of the file. Errors are one-line AudioErrors naming ``name``.
    """
    if not data:
        raise AudioError(f"{name}: empty upload (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            sr = int(f.samplerate)
            frames = f.read(frames=-1, dtype="float32", always_2d=True)
        return AudioArray(frames, sr, name)
    except _SF_ERRORS as exc:
        sf_detail = _first_line(exc)
    dec = _AvDecoder(io.BytesIO(data), unreadable=sf_detail, name=name)
    try:
        blocks = list(dec.blocks())
    finally:
        dec.close()
    channels = blocks[0].shape[1] if blocks else max(dec.channels, 1)
    frames = np.concatenate(blocks) if blocks else np.zeros((0, channels), np.float32)
    return AudioArray(frames, dec.sample_rate, name)


def _to_mono(data: np.ndarray) -> np.ndarray:
    """``(N, C)`` -> ``(N,)`` float32: the channel mean, as librosa's ``to_mono``."""
    if data.shape[1] == 1:
        return np.ascontiguousarray(data[:, 0])
    # librosa averages the (C, N) transpose over axis 0; same values, same float32 rounding
    return np.mean(data.T, axis=0)


# audio read from pipes (`read_stream`), by the name the user gave ("-", a FIFO's path)
_STREAMS: dict[str, AudioArray] = {}


def is_stream(path: str | os.PathLike) -> bool:
    """True for "-" (stdin) and for an existing input that is neither a regular file nor a folder:
    a FIFO, ``/dev/stdin`` fed by a pipe, ``/dev/fd/N`` from a shell's ``<(...)``."""
    if str(path) == "-":
        return True
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def read_stream(path: str | os.PathLike) -> AudioArray:
    """Read a pipe's audio into memory once, as ffmpeg and sox do (a pipe can be read only once
    and cannot seek); later reads of the same name (`load_audio`, `BlockSource`) get the samples.

    "-" reads standard input. Raises AudioError for data that is not audio (naming the input).
    """
    key = str(path)
    if key not in _STREAMS:
        name = "stdin" if key == "-" else key
        try:
            if key == "-":
                data = sys.stdin.buffer.read()
            else:
                with open(path, "rb") as f:
                    data = f.read()
        except OSError as exc:
            raise AudioError(f"{name}: cannot read ({exc.strerror or exc})") from None
        if not data:
            raise AudioError(f"{name}: no audio data (the pipe was empty)")
        _STREAMS[key] = decode_bytes(data, name)
    return _STREAMS[key]


def _streamed(source: AudioSource) -> AudioSource:
    """The in-memory audio of a source that was read from a pipe, else the source itself."""
    if isinstance(source, AudioArray) or not _STREAMS:
        return source
    return _STREAMS.get(str(source), source)


def load_audio(source: AudioSource, sr: int) -> np.ndarray:
    """Load audio as mono float32 at ``sr`` Hz, bit-identical to ``librosa.load`` for files.

    Args:
        source: a path (anything soundfile reads: WAV, FLAC, OGG, MP3...; else any container
            with an audio stream that PyAV reads: M4A/AAC, MP4, WebM...), or an `AudioArray`.
        sr: target sample rate in Hz.

    Returns:
        ``(N,)`` float32 samples in [-1, 1] for PCM input.

    Raises:
        AudioError: missing/unreadable file, zero samples, or non-finite samples.
    """
    source = _streamed(source)
    if isinstance(source, AudioArray):
        name = source.name
        data, sr_native = _array_frames(source), int(source.sample_rate)
    else:
        path = Path(source)
        name = str(path)
        data, sr_native = _read_frames(path)
    if data.shape[0] == 0:
        what = "audio" if isinstance(source, AudioArray) else "audio file"
        raise AudioError(f"{name}: {what} has zero samples")
    mono = _to_mono(data)
    if not np.isfinite(mono).all():
        raise AudioError(f"{name}: audio contains non-finite samples (NaN or Inf)")
    out = resample(mono, sr_native, sr, name=name)
    log.debug("loaded %s: %d Hz -> %d Hz, %d samples", name, sr_native, sr, out.shape[0])
    return out


@dataclass(frozen=True)
class AudioInfo:
    """What `probe` finds: exact frame count, native rate, channel count."""

    frames: int
    sample_rate: int
    channels: int
    name: str

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


class BlockSource:
    """Random access to a source's native samples, mono float32, without reading it whole.

    ``read(start, stop)`` returns ``(stop - start,)`` samples (clipped to the source) mixed to
    mono by the channel mean. Files libsndfile reads are read with seeks; PyAV-decoded files
    are decoded sequentially with a window of recent samples (a read that starts more than
    `AV_KEEP_SECONDS` before the last one decodes again from the start); arrays are sliced.
    Use as a context manager or call `close()`.
    """

    AV_KEEP_SECONDS = 30.0

    def __init__(self, source: AudioSource) -> None:
        source = _streamed(source)
        self.name = source_name(source)
        self._array: np.ndarray | None = None
        self._sf: sf.SoundFile | None = None
        self._path: Path | None = None
        self._av: _AvDecoder | None = None
        self._buf: np.ndarray = np.zeros((0, 1), np.float32)
        self._buf_start = 0
        self._it: Iterator[np.ndarray] | None = None
        if isinstance(source, AudioArray):
            self._array = _array_frames(source)
            self.info = AudioInfo(
                self._array.shape[0], int(source.sample_rate), self._array.shape[1], self.name
            )
            return
        path = Path(source)
        _check_file(path)
        self._path = path
        try:
            self._sf = sf.SoundFile(str(path))
            self.info = AudioInfo(
                int(self._sf.frames), int(self._sf.samplerate), int(self._sf.channels), self.name
            )
            return
        except _SF_ERRORS as exc:
            sf_detail = _first_line(exc)
        probe_dec = _AvDecoder(path, unreadable=sf_detail)
        try:  # the exact length needs one decoding pass (container durations are estimates)
            frames, channels = 0, probe_dec.channels
            for block in probe_dec.blocks():
                frames += block.shape[0]
                channels = block.shape[1]
        finally:
            probe_dec.close()
        self.info = AudioInfo(frames, probe_dec.sample_rate, max(channels, 1), self.name)

    def __enter__(self) -> BlockSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sf is not None:
            self._sf.close()
            self._sf = None
        if self._av is not None:
            self._av.close()
            self._av = None
            self._it = None

    def read(self, start: int, stop: int) -> np.ndarray:
        """``(stop - start,)`` float32 mono native samples; start/stop clipped to the source."""
        a, b = max(0, int(start)), min(self.info.frames, int(stop))
        if b <= a:
            return np.zeros(0, np.float32)
        if self._array is not None:
            data = self._array[a:b]
        elif self._path is not None and self._av is None and self._sf is not None:
            self._sf.seek(a)
            data = self._sf.read(frames=b - a, dtype="float32", always_2d=True)
        else:
            data = self._read_av(a, b)
        mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
        if not np.isfinite(mono).all():
            raise AudioError(f"{self.name}: audio contains non-finite samples (NaN or Inf)")
        return np.ascontiguousarray(mono, dtype=np.float32)

    def _restart(self) -> None:
        if self._av is not None:
            self._av.close()
        assert self._path is not None
        self._av = _AvDecoder(self._path)
        self._it = self._av.blocks()
        self._buf = np.zeros((0, self.info.channels), np.float32)
        self._buf_start = 0

    def _read_av(self, a: int, b: int) -> np.ndarray:
        if self._it is None or a < self._buf_start:
            self._restart()
        assert self._it is not None
        pieces = [self._buf]
        end = self._buf_start + self._buf.shape[0]
        while end < b:
            block = next(self._it, None)
            if block is None:
                break
            pieces.append(block)
            end += block.shape[0]
        buf = np.concatenate(pieces) if len(pieces) > 1 else self._buf
        out = buf[a - self._buf_start : b - self._buf_start].copy()
        keep_from = max(self._buf_start, a - int(self.AV_KEEP_SECONDS * self.info.sample_rate))
        self._buf = buf[keep_from - self._buf_start :]
        self._buf_start = keep_from
        return out


def open_blocks(source: AudioSource) -> BlockSource:
    """A `BlockSource` over a file or an `AudioArray` (``.info``: frames, rate, channels)."""
    return BlockSource(source)


def probe(source: AudioSource) -> AudioInfo:
    """Exact frame count, native sample rate and channel count of a source."""
    with BlockSource(source) as src:
        return src.info


# -- writing -----------------------------------------------------------------------------------

# extension -> (libsndfile format, subtype); None = soundfile's default for the format
_WRITERS: dict[str, tuple[str, str | None]] = {
    "wav": ("WAV", None),  # PCM_16
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "oga": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "aiff": ("AIFF", "PCM_16"),
    "aif": ("AIFF", "PCM_16"),
}
# rates a codec accepts (others are an error before anything is written)
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def writable_formats() -> list[str]:
    """Extensions `write_audio_atomic` can write with the installed libsndfile."""
    formats = sf.available_formats()
    out = []
    for ext, (fmt, subtype) in _WRITERS.items():
        if fmt in formats and (subtype is None or subtype in sf.available_subtypes(fmt)):
            out.append(ext)
    return out


def output_format(path: str | os.PathLike) -> str:
    """The format an output path names by its extension ("wav", "flac", "ogg", "mp3"...).

    A name without an extension is WAV. Raises InputError for an extension that cannot be
    written, listing the ones that can (so a planner can refuse a job before anything runs).
    """
    suffix = Path(path).suffix
    ext = suffix[1:].lower() if suffix else "wav"
    if ext not in writable_formats():
        raise InputError(f"{path}: cannot write .{ext} audio (writable: {', '.join(writable_formats())})")
    return ext


# temporary files of writers that are open now (removed by `remove_temp_files`)
_ACTIVE: set[Path] = set()
_ACTIVE_LOCK = threading.Lock()


def remove_temp_files() -> list[Path]:
    """Delete the temporary files of every writer still open (e.g. from a signal handler's
    exit path); returns what was removed."""
    with _ACTIVE_LOCK:
        paths = list(_ACTIVE)
        _ACTIVE.clear()
    removed = []
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


@contextlib.contextmanager
def cleanup_on_signal(signums: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[None]:
    """Turn the given signals into ``SystemExit(128 + signum)`` inside the block (main thread).

    The exception unwinds through open writers, which delete their temporary files (no partial
    output is left); any temporary file still registered is removed on the way out; the process
    then exits with the conventional status (143 for SIGTERM). Previous handlers are restored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    except SystemExit:
        remove_temp_files()
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# -- temporary files of killed writers ---------------------------------------------------------------

# `.metis-<pid>.<host>.<8 hex>.tmp`: the writer's process id and a tag of its host, so a later run
# can tell a temporary file of a process that no longer exists from one still being written.
_TEMP_NAME = re.compile(r"^\.metis-(\d+)\.([0-9a-f]{6})\.[0-9a-f]{8}\.tmp$")
_HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:6]
_SWEPT: set[Path] = set()  # folders this process already swept (`remove_orphan_temps`)


def temp_name() -> str:
    """A fresh temporary file name for a writer of this process (`_TEMP_NAME`)."""
    return f".metis-{os.getpid()}.{_HOST_TAG}.{uuid.uuid4().hex[:8]}.tmp"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # another user's live process (or a pid os.kill cannot take): keep
    return True


def open_files() -> set[tuple[int, int]] | None:
    """(device, inode) of every file a process of this machine has open; None without /proc."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    seen: set[tuple[int, int]] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                st = os.stat(f"/proc/{entry}/fd/{fd}")
                seen.add((st.st_dev, st.st_ino))
    return seen


def remove_orphan_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed writers (SIGKILL, a crash) left in `folder`.

    A temporary file is an orphan when it names this host, the process that wrote it no longer
    exists, and no process of this machine has it open. Files of other hosts (a shared network
    folder) and of live processes are kept. Returns what was removed; never raises.
    """
    try:
        names = [n for n in os.listdir(folder) if n.startswith(".metis-") and n.endswith(".tmp")]
    except OSError:
        return []
    candidates = []
    for name in names:
        m = _TEMP_NAME.match(name)
        if not m or m.group(2) != _HOST_TAG:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and not _pid_alive(pid):
            candidates.append(Path(folder) / name)
    if not candidates:
        return []
    busy = open_files()
    removed = []
    for p in candidates:
        try:
            st = p.stat()
            if busy is not None and (st.st_dev, st.st_ino) in busy:
                continue
            p.unlink()
        except OSError:
            continue
        removed.append(p)
        log.info("removed %s (temporary file of an interrupted run)", p)
    return removed


def _sweep_once(folder: Path) -> None:
    """`remove_orphan_temps(folder)` the first time this process writes into `folder`."""
    try:
        key = folder.resolve()
    except (OSError, RuntimeError):
        return
    with _ACTIVE_LOCK:
        if key in _SWEPT:
            return
        _SWEPT.add(key)
    remove_orphan_temps(folder)


def _check_wav(wav: np.ndarray, path: Path) -> np.ndarray:
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise AudioError(f"{path}: expected a mono (N,) waveform to write, got shape {tuple(wav.shape)}")
    if not np.isfinite(wav).all():
        raise AudioError(f"{path}: refusing to write non-finite samples")
    return wav


def _disk_full(directory: Path) -> bool:
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    # pseudo filesystems (/proc, /sys) report no blocks at all: not "full"
    return st.f_blocks > 0 and st.f_bavail * st.f_frsize < 64 * 1024


def _write_failure(path: Path, exc: BaseException, directory: Path) -> OutputError:
    """A one-line OutputError for a failed write of `path`."""
    if isinstance(exc, OSError) and exc.errno is not None:
        reason = {
            errno.ENOSPC: "no space left on device",
            errno.EDQUOT: "disk quota exceeded",
            errno.ENAMETOOLONG: "file name too long",
            errno.EACCES: "permission denied",
            errno.EROFS: "read-only file system",
            errno.EEXIST: "exists: another run wrote it while this job ran; use --overwrite to replace it",
        }.get(exc.errno, exc.strerror or _first_line(exc))
    elif isinstance(exc, OSError):
        reason = _first_line(exc)
    elif _disk_full(directory):  # libsndfile only says "System error."
        reason = "no space left on device"
    else:
        reason = _first_line(exc)
    return OutputError(f"{path}: cannot write the output ({reason})")


_RENAME_NOREPLACE = 1  # linux/fs.h
_AT_FDCWD = -100


def _rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that fails with FileExistsError when `dst` exists (Linux renameat2)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(dst))
    # neither link(2) nor renameat2 on this filesystem: the best remaining check (not atomic)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.replace(src, dst)


def place_file(tmp: Path, path: Path, replace: bool = True) -> None:
    """Move a finished temporary file to its final name in the same folder.

    replace=False never replaces a file that exists at `path` (one written meanwhile by another
    process): link(2) then unlink, which fails atomically with FileExistsError; where the
    filesystem has no hard links, renameat2(RENAME_NOREPLACE). replace=True: rename(2) over it.
    """
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EXDEV):
            raise
        _rename_noreplace(tmp, path)
        return
    os.unlink(tmp)


class AtomicWavWriter:
    """Stream mono blocks into an audio file that appears only when the writer closes cleanly.

    Usage::

        with AtomicWavWriter("out.flac", sr=24000) as w:
            for block in blocks:          # each (n,) float32
                w.write(block)

    The format follows the extension (`output_format`; WAV PCM_16 without one). Blocks go to a
    short hidden temporary file (``.metis-<pid>.<host>.<8 hex>.tmp``) in the target directory
    (the first time a process writes into a folder, the temporary files that killed writers left
    there are removed: `remove_orphan_temps`); on normal exit it is closed, flushed to disk and
    moved to ``path`` (`place_file`: replacing a file there, or with ``replace=False`` failing
    with an "exists" `OutputError` when one appeared). On any exception (KeyboardInterrupt and
    SystemExit included) the temporary file is deleted and any previous ``path`` is left
    untouched. Write failures raise `OutputError`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sr: int = CODEC_SAMPLE_RATE,
        subtype: str | None = None,
        format: str | None = None,
        replace: bool = True,
    ):
        self.path = Path(path)
        self.replace = replace
        self.sr = int(sr)
        self.ext = format or output_format(self.path)
        if self.ext not in _WRITERS:
            raise InputError(f"{self.path}: cannot write .{self.ext} audio")
        self.format, default_subtype = _WRITERS[self.ext]
        self.subtype = subtype or default_subtype  # None = soundfile's default (WAV: PCM_16)
        if self.subtype == "OPUS" and self.sr not in _OPUS_RATES:
            raise InputError(f"{self.path}: Opus cannot store {self.sr} Hz audio")
        self.frames_written = 0
        self._tmp: Path | None = None
        self._file: sf.SoundFile | None = None
        self._dir = self.path.parent if str(self.path.parent) else Path(".")

    def __enter__(self) -> AtomicWavWriter:
        if not self._dir.is_dir():
            raise OutputError(f"{self.path}: output directory does not exist")
        _sweep_once(self._dir)  # temporary files a killed run left here
        # soundfile creates the file itself (open(2), mode 0666 & ~umask)
        tmp = self._dir / temp_name()
        self._tmp = tmp
        with _ACTIVE_LOCK:
            _ACTIVE.add(tmp)
        try:
            # created here first (mode 0666 & ~umask, like soundfile's own open): a refusal names its
            # errno; the bytes name lets libsndfile write into folders whose name is not UTF-8
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
            self._file = sf.SoundFile(
                os.fsencode(tmp),
                mode="w",
                samplerate=self.sr,
                channels=1,
                format=self.format,
                subtype=self.subtype,
            )
        except BaseException as exc:
            self._discard()
            if isinstance(exc, FileNotFoundError) and self._dir.is_dir():
                msg = f"{self.path}: cannot write the output (this folder takes no new files)"
                raise OutputError(msg) from None
            if isinstance(exc, Exception):
                raise _write_failure(self.path, exc, self._dir) from None
            raise
        return self

    def write(self, block: np.ndarray) -> None:
        """Append ``(n,)`` float32 samples."""
        if self._file is None:
            raise RuntimeError("AtomicWavWriter.write called outside its context")
        block = _check_wav(block, self.path)
        try:
            self._file.write(block)
        except (OSError, sf.LibsndfileError, RuntimeError) as exc:
            raise _write_failure(self.path, exc, self._dir) from None
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
            place_file(self._tmp, self.path, self.replace)
            with _ACTIVE_LOCK:
                _ACTIVE.discard(self._tmp)
            self._tmp = None
        except BaseException as err:
            self._discard()
            if isinstance(err, (OSError, sf.LibsndfileError, RuntimeError)):
                raise _write_failure(self.path, err, self._dir) from None
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
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            with _ACTIVE_LOCK:
                _ACTIVE.discard(self._tmp)
            self._tmp = None


AtomicAudioWriter = AtomicWavWriter  # the writer is format-aware; both names stay


def write_audio_atomic(
    path: str | os.PathLike, wav: np.ndarray, sr: int = CODEC_SAMPLE_RATE, replace: bool = True
) -> Path:
    """Write a mono ``(N,)`` float32 waveform in the format the extension names, atomically
    (replace=False: never over a file that exists, an "exists" `OutputError`).

    Returns:
        The written path. On any failure no partial file exists and a previous file is intact.

    Raises:
        InputError: an extension that cannot be written. AudioError: bad samples.
        OutputError: the file cannot be written (full filesystem, name too long...).
    """
    path = Path(path)
    wav = _check_wav(wav, path)
    with AtomicWavWriter(path, sr=sr, replace=replace) as w:
        w.write(wav)
    return path


write_wav_atomic = write_audio_atomic  # the old name


def encode_audio(wav: np.ndarray, sr: int = CODEC_SAMPLE_RATE, fmt: str = "wav") -> bytes:
    """The bytes of a mono ``(N,)`` float32 waveform as a ``fmt`` file (an `output_format`
    name: wav, flac, ogg, mp3...), for `-o -` (stdout) or an HTTP response."""
    ext = fmt.lower().lstrip(".")
    if ext not in writable_formats():
        raise InputError(f"cannot write .{ext} audio (writable: {', '.join(writable_formats())})")
    wav = _check_wav(wav, Path(f"<{ext} output>"))
    fmt_name, subtype = _WRITERS[ext]
    buf = io.BytesIO()
    buf.name = f"output.{ext}"
    sf.write(buf, wav, int(sr), format=fmt_name, subtype=subtype)
    return buf.getvalue()

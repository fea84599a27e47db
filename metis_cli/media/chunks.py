"""Long inputs: chunk planning, block reading, equal-power joins.

Everything here is pure (numpy + soundfile + soxr), no models: the engine's `run_long` uses it.
Units: *frames* are 50 Hz token frames (20 ms = 480 samples at 24 kHz = 320 samples at 16 kHz),
so chunk boundaries fall on exact sample positions at both model rates. See docs/LONGFORM.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metis_cli.constants import CODEC_SAMPLE_RATE, FRAME_RATE, HOP_SAMPLES, SSL_SAMPLE_RATE
from metis_cli.errors import AudioError, InputError
from metis_cli.media.audio import resample, resampled_length

log = logging.getLogger(__name__)

SSL_HOP = SSL_SAMPLE_RATE // FRAME_RATE  # 320 samples at 16 kHz per frame
RESAMPLE_MARGIN_SECONDS = 0.05  # native audio read beyond each block edge before resampling
ENERGY_BLOCK_FRAMES = 3000  # frames per read in the energy pass (60 s)


def seconds_to_frames(seconds: float) -> int:
    return int(round(seconds * FRAME_RATE))


def chunk_seed(seed: int, index: int) -> int:
    """Generator seed of chunk `index` of a job seeded with `seed` (stable across runs/platforms)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(index)]).generate_state(1)
    return int(state[0]) & 0x7FFFFFFF


# ------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class Chunk:
    """One chunk in frames: it covers [start, stop); [start, start + fade_in) is crossfaded with
    the previous chunk and [stop - fade_out, stop) with the next one."""

    index: int
    start: int
    stop: int
    fade_in: int
    fade_out: int

    @property
    def frames(self) -> int:
        return self.stop - self.start


def plan_chunks(energy: np.ndarray, chunk: int, overlap: int, search: int) -> list[Chunk]:
    """Cut `len(energy)` frames into chunks of at most `chunk` frames with `overlap`-frame joins.

    energy: (N,) mean-square level per frame. The k = ceil(N / (chunk - overlap - search)) chunks
    have nominal join centres at i*N/k; each centre moves within ±search/2 frames to where the
    crossfade window (overlap frames around it) has the least energy, ties going to the nominal
    place. Every chunk is then at most `chunk` frames and at least N/k - search frames.
    """
    n = int(len(energy))
    if n <= chunk:
        return [Chunk(0, 0, n, 0, 0)]
    overlap = max(1, overlap)
    search = max(0, min(search, chunk // 2 - overlap))
    usable = chunk - overlap - search
    if usable < 1:
        raise InputError(f"chunk of {chunk} frames is too short for a {overlap}-frame overlap")
    k = math.ceil(n / usable)
    csum = np.concatenate([[0.0], np.cumsum(np.asarray(energy, dtype=np.float64))])
    half = overlap // 2
    cuts = []
    for i in range(1, k):
        nominal = round(i * n / k)
        lo, hi = nominal - search // 2, nominal + search - search // 2
        cand = np.arange(max(lo, half + 1), min(hi, n - (overlap - half) - 1) + 1)
        if cand.size == 0:
            cuts.append(nominal)
            continue
        win = csum[cand + overlap - half] - csum[cand - half]  # energy of [c - half, c + overlap - half)
        score = win + 1e-9 * (win.max() + 1e-12) * np.abs(cand - nominal)
        cuts.append(int(cand[int(np.argmin(score))]))
    edges = [0, *cuts, n]
    out = []
    for i in range(k):
        start = edges[i] - half if i > 0 else 0
        stop = edges[i + 1] + (overlap - half) if i < k - 1 else n
        out.append(Chunk(i, start, stop, overlap if i > 0 else 0, overlap if i < k - 1 else 0))
    return out


# ------------------------------------------------------------------------------ reading


class BlockReader:
    """Reads a mono signal block by block from a sound file, never the whole file at once.

    Blocks are addressed in frames and returned at 16 kHz (`read16`). Each block is read with
    `RESAMPLE_MARGIN_SECONDS` of native audio on both sides, resampled like `audio.load_audio`
    (soxr HQ) and trimmed; the block starts on a native sample that falls on the 16 kHz grid, so
    samples agree with whole-file resampling to ~3e-7 (float rounding) at the usual rates.
    """

    def __init__(self, path: Any) -> None:
        from metis_cli.media.audio import open_blocks

        self.path = path  # a file path or an `audio.AudioArray`
        self._src = open_blocks(path)  # AudioError naming the source if unreadable
        self.sr = int(self._src.info.sample_rate)
        self.n_native = int(self._src.info.frames)
        if self.n_native <= 0:
            self._src.close()
            raise AudioError(f"{self.path}: audio file has zero samples")
        self.n_out = resampled_length(self.n_native, self.sr, CODEC_SAMPLE_RATE)  # 24 kHz samples
        self.n_frames = math.ceil(self.n_out / HOP_SAMPLES)
        self.max_block = 0  # longest native block read so far (samples)

    def close(self) -> None:
        self._src.close()

    def __enter__(self) -> BlockReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def seconds(self) -> float:
        return self.n_native / self.sr

    def _native(self, a: int, b: int) -> np.ndarray:
        """(b - a,) float32 mono native samples, a/b clipped to the file."""
        a, b = max(0, a), min(self.n_native, b)
        if b <= a:
            return np.zeros(0, np.float32)
        self.max_block = max(self.max_block, b - a)
        return self._src.read(a, b)

    def frame_energy(self) -> np.ndarray:
        """(n_frames,) mean square per 20 ms frame (one pass in 60 s blocks)."""
        edges = np.minimum(
            np.round(np.arange(self.n_frames + 1) * self.sr / FRAME_RATE).astype(np.int64), self.n_native
        )
        out = np.zeros(self.n_frames, np.float64)
        for f0 in range(0, self.n_frames, ENERGY_BLOCK_FRAMES):
            f1 = min(self.n_frames, f0 + ENERGY_BLOCK_FRAMES)
            x = self._native(int(edges[f0]), int(edges[f1])).astype(np.float64) ** 2
            rel = edges[f0:f1] - edges[f0]
            valid = rel < x.shape[0]
            sums = np.zeros(f1 - f0)
            if x.size:
                sums[valid] = np.add.reduceat(x, rel[valid])
            counts = np.maximum(np.diff(edges[f0 : f1 + 1]), 1)
            out[f0:f1] = sums / counts
        return out

    def read16(self, f0: int, f1: int) -> np.ndarray:
        """((f1 - f0) * 320,) float32 at 16 kHz for frames [f0, f1); zeros past the file's end."""
        n = (f1 - f0) * SSL_HOP
        margin = int(math.ceil(RESAMPLE_MARGIN_SECONDS * self.sr))
        t0 = f0 / FRAME_RATE
        # start on a native sample that lies on the 16 kHz grid, so whole-file and block resampling
        # put their output samples at the same instants (step = 441 at 22.05/44.1 kHz)
        step = self.sr // math.gcd(self.sr, SSL_SAMPLE_RATE)
        step = step if step <= self.sr else 1  # odd rates: nearest sample (sub-sample offset)
        a = max(0, (int(math.floor(t0 * self.sr)) - margin) // step * step)
        b = int(math.ceil(f1 / FRAME_RATE * self.sr)) + margin
        x = self._native(a, b)
        if x.size == 0:
            return np.zeros(n, np.float32)
        y = resample(x, self.sr, SSL_SAMPLE_RATE, name=str(self.path))
        off = int(round((t0 - a / self.sr) * SSL_SAMPLE_RATE))
        y = y[off : off + n]
        return np.pad(y, (0, n - y.shape[0])) if y.shape[0] < n else y


# ------------------------------------------------------------------------------ joining


def equal_power_fades(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(fade_out, fade_in), each (n,) float32, with fade_out**2 + fade_in**2 == 1."""
    u = (np.arange(n, dtype=np.float64) + 0.5) / max(n, 1)
    return np.cos(0.5 * np.pi * u).astype(np.float32), np.sin(0.5 * np.pi * u).astype(np.float32)


def equal_power_crossfade(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) join of two equally long (n,) signals: a fades out while b fades in."""
    if a.shape != b.shape:
        raise ValueError(f"crossfade needs equal lengths, got {a.shape} and {b.shape}")
    w_out, w_in = equal_power_fades(a.shape[0])
    return (a * w_out + b * w_in).astype(np.float32)


class Stitcher:
    """Turns per-chunk waveforms into a stream of finished output blocks.

    `add(wav, chunk)` takes the chunk's (chunk.frames * 480,) 24 kHz waveform and returns what is
    final: the crossfaded join with the previous chunk plus the body; the chunk's own fade-out tail
    is held until the next chunk arrives. At most `total` samples are ever given out.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.emitted = 0
        self._tail: np.ndarray | None = None

    def _give(self, block: np.ndarray) -> np.ndarray:
        block = block[: max(0, self.total - self.emitted)]
        self.emitted += block.shape[0]
        return block

    def add(self, wav: np.ndarray, chunk: Chunk) -> np.ndarray:
        if wav.shape[0] != chunk.frames * HOP_SAMPLES:
            raise ValueError(f"chunk {chunk.index}: {wav.shape[0]} samples for {chunk.frames} frames")
        parts = []
        head = chunk.fade_in * HOP_SAMPLES
        if head:
            if self._tail is None or self._tail.shape[0] != head:
                raise ValueError(f"chunk {chunk.index}: no matching tail to crossfade with")
            parts.append(equal_power_crossfade(self._tail, wav[:head]))
        body_end = wav.shape[0] - chunk.fade_out * HOP_SAMPLES
        parts.append(wav[head:body_end])
        self._tail = wav[body_end:] if chunk.fade_out else None
        return self._give(np.concatenate(parts).astype(np.float32))

    def finish(self) -> np.ndarray:
        """Zero padding up to `total` when the chunks fell short (they should not)."""
        if self._tail is not None:
            raise ValueError("the last chunk promised a crossfade that never came")
        return self._give(np.zeros(max(0, self.total - self.emitted), np.float32))


def fit_length(wav: np.ndarray, n: int) -> np.ndarray:
    """First n samples of wav, zero-padded at the end when shorter."""
    return wav[:n] if wav.shape[0] >= n else np.pad(wav, (0, n - wav.shape[0]))


def edge_fades(wav: np.ndarray, n: int, fade_in: bool, fade_out: bool) -> np.ndarray:
    """Short equal-power fades on a piece's edges (TTS joins), length unchanged."""
    wav = wav.astype(np.float32, copy=True)
    n = min(n, wav.shape[0] // 2)
    if n:
        w_out, w_in = equal_power_fades(n)
        if fade_in:
            wav[:n] *= w_in
        if fade_out:
            wav[-n:] *= w_out
    return wav


@dataclass(frozen=True)
class ChunkProgress:
    """Reported after each finished chunk (or TTS piece) of a long job."""

    output: Path
    index: int  # 0-based chunk just finished
    total: int  # chunks in the job
    seconds_done: float  # output seconds final so far
    seconds_total: float  # expected output seconds (0 when unknown, e.g. TTS)


def iter_pairs(chunks: list[Chunk]) -> Iterator[tuple[Chunk, Chunk | None]]:
    """Each chunk with its successor (None for the last)."""
    for i, c in enumerate(chunks):
        yield c, chunks[i + 1] if i + 1 < len(chunks) else None

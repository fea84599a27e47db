"""The output writer: every job's output, short or long, goes through `OutputWriter.write`.

A job's output is a stream of 24 kHz blocks (one block for a short job, one per chunk for a long
one). Files are written atomically (`audio.AtomicAudioWriter`: a temporary file renamed into
place only when the whole stream succeeded; removed on any failure or signal). The output "-"
is standard output: the blocks are collected and written as one WAV when complete. With
`keep=True` (the Python API's single call) the joined waveform is also returned. With
`replace=False` (every job not run with --overwrite) the placement never replaces a file that
appeared at the target meanwhile: the job fails with "exists" (`audio.place_file`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metis_cli.constants import CODEC_SAMPLE_RATE
from metis_cli.media.audio import AtomicAudioWriter, encode_audio


@dataclass
class Written:
    samples: int  # samples written (24 kHz)
    wav: np.ndarray | None = None  # the joined waveform when kept


class OutputWriter:
    """Writes job outputs; `target=None` keeps them in memory only (nothing on disk)."""

    def __init__(self, sample_rate: int = CODEC_SAMPLE_RATE) -> None:
        self.sample_rate = sample_rate

    def write(
        self, target: Path | None, blocks: Iterable[np.ndarray], keep: bool = False, replace: bool = True
    ) -> Written:
        if target is None:
            wav = _join(blocks)
            return Written(int(wav.shape[0]), wav)
        if str(target) == "-":
            wav = _join(blocks)
            _to_stdout(wav, self.sample_rate)
            return Written(int(wav.shape[0]), wav if keep else None)
        kept: list[np.ndarray] = []
        with AtomicAudioWriter(target, self.sample_rate, replace=replace) as w:
            for block in blocks:
                w.write(block)
                if keep:
                    kept.append(block)
        return Written(w.frames_written, _join(kept) if keep else None)


def _join(blocks: Iterable[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.zeros(0, np.float32), *blocks]).astype(np.float32, copy=False)


def _to_stdout(wav: np.ndarray, sr: int) -> None:
    out = sys.stdout.buffer
    out.write(encode_audio(wav, sr, "wav"))
    out.flush()

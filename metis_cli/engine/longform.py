"""The long-form strategy (docs/LONGFORM.md): which jobs are long, and their output block by block.

SE/TSE/VC inputs longer than one chunk are cut at quiet frames (`metis_cli.media.chunking.plan_chunks`),
generated chunk by chunk with bounded memory (the speaker prompt fixed for TSE/VC, the previous
chunk's last output tokens carried as the prompt for SE), and joined with equal-power
crossfades. TTS texts longer than `max_chars` are spoken piece by piece with the same prompt.
Which role is chunked and which is the fixed prompt is task data (`TaskSpec.chunk_input`,
`speaker_prompt`, `long_text`): nothing here names a task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from metis_cli.constants import CODEC_SAMPLE_RATE, HOP_SAMPLES, TRAIN_MAX_SECONDS, TRAIN_MIN_SECONDS
from metis_cli.core.tasks import Conditions, Job, prompt_codes
from metis_cli.engine.batch import BatchGenerator, Decoding
from metis_cli.errors import Cancelled, MetisError
from metis_cli.media import chunks as chunking
from metis_cli.options import LongformOptions
from metis_cli.text import sentences

log = logging.getLogger(__name__)

CHUNK_MARGIN_FRAMES = 3  # audio read past a chunk's end so the model yields >= its frames
TTS_FADE_SECONDS = 0.005  # fade at the edges of TTS pieces (no overlap: durations add up)


class LongformStrategy:
    """Turns one long job into a stream of finished 24 kHz blocks."""

    def __init__(self, gen: BatchGenerator, options: LongformOptions) -> None:
        self.gen = gen
        self.spec = gen.loader.spec
        self.options = options.validate()

    def is_long(self, job: Job) -> bool:
        """SE/TSE/VC inputs longer than one chunk; TTS texts longer than `max_chars`.
        Unreadable inputs stay on the normal path (it reports them)."""
        lf = self.options
        if not lf.enabled:
            return False
        if self.spec.long_text:
            return bool(job.text and len(job.text.strip()) > lf.max_chars)
        role = self.spec.chunk_input
        if role is None or role not in job.inputs:
            return False
        try:
            with chunking.BlockReader(job.inputs[role]) as reader:
                return reader.n_frames > chunking.seconds_to_frames(lf.chunk_seconds)
        except MetisError:
            return False

    def blocks(
        self,
        job: Job,
        decoding: Decoding,
        info: dict,
        on_chunk: Callable[[Any], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[np.ndarray]:
        """The job's output, block by block (`info` gets chunk counts and the input's length);
        `on_chunk` gets a `chunks.ChunkProgress` after each chunk; `cancelled` is checked between
        chunks and decoding steps (raises `errors.Cancelled`)."""
        if self.spec.long_text:
            pieces = sentences.split_text(job.text or "", self.options.max_chars)
            return self.tts_blocks(job, decoding, info, pieces, on_chunk, cancelled)
        return self._audio_chunks(job, decoding, info, on_chunk, cancelled)

    def _progress(
        self, job: Job, index: int, total: int, done: int, expected: int, on_chunk: Callable | None
    ) -> None:
        log.info("%s: chunk %d/%d done", job.output, index + 1, total)
        if on_chunk is not None:
            sr = CODEC_SAMPLE_RATE
            on_chunk(chunking.ChunkProgress(job.output, index, total, done / sr, expected / sr))

    def _audio_chunks(
        self,
        job: Job,
        decoding: Decoding,
        info: dict,
        on_chunk: Callable | None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[np.ndarray]:
        """SE / TSE / VC: finished 24 kHz blocks of a long input, chunk by chunk."""
        lf, gen = self.options, self.gen
        tok = gen.loader.tokenizers
        with chunking.BlockReader(job.inputs[self.spec.chunk_input]) as reader:
            info["audio_seconds"] = reader.seconds
            prompt = None
            budget = TRAIN_MAX_SECONDS  # prompt (or carried context) + chunk stay in the training range
            if self.spec.speaker_prompt is not None:
                gen.loader.enter("conditions")
                with gen.timer("conditions"):
                    prompt = prompt_codes(tok, job.inputs[self.spec.speaker_prompt])
                budget -= len(prompt[2]) / tok.ssl_rate
                context = 0  # the fixed speaker prompt is the context (docs/LONGFORM.md)
            else:
                context = chunking.seconds_to_frames(lf.context_seconds)
                budget -= lf.context_seconds
            chunk_frames = chunking.seconds_to_frames(max(min(lf.chunk_seconds, budget), TRAIN_MIN_SECONDS))
            with gen.timer("plan"):
                chunks = chunking.plan_chunks(
                    reader.frame_energy(),
                    chunk_frames,
                    chunking.seconds_to_frames(lf.overlap_seconds),
                    chunking.seconds_to_frames(lf.search_seconds),
                )
            info.update(chunks=len(chunks), max_chunk_frames=max(c.frames for c in chunks))
            stitch = chunking.Stitcher(reader.n_out)
            carry: tuple[torch.Tensor, torch.Tensor] | None = None  # (P,) semantic, (P, 12) acoustic
            for chunk, nxt in chunking.iter_pairs(chunks):
                check_cancelled(cancelled)
                ctx = 0 if carry is None else int(carry[0].shape[0])
                gen.loader.enter("conditions")
                with gen.timer("conditions"):
                    wav16 = reader.read16(chunk.start - ctx, chunk.stop + CHUNK_MARGIN_FRAMES)
                    conds = self._chunk_conditions(job, wav16, carry, prompt)
                cjob = replace(job, seed=chunking.chunk_seed(job.seed, chunk.index))
                (sem,), (codes,) = gen.codes([(cjob, conds)], decoding, cancelled)
                if codes.shape[0] < chunk.frames:
                    log.warning(
                        "chunk %d: %d frames for %d; padded", chunk.index, codes.shape[0], chunk.frames
                    )
                full = codes if carry is None else torch.cat([carry[1].to(codes.device), codes])
                wav = gen.decode(full)[ctx * HOP_SAMPLES :]
                carry = None
                if nxt is not None and context:
                    b = nxt.start - chunk.start
                    a = max(0, b - context)
                    carry = (sem[a:b].clone(), codes[a:b].clone())
                yield stitch.add(chunking.fit_length(wav, chunk.frames * HOP_SAMPLES), chunk)
                self._progress(job, chunk.index, len(chunks), stitch.emitted, reader.n_out, on_chunk)
            yield stitch.finish()
            info["max_read_samples"] = reader.max_block

    def _chunk_conditions(
        self,
        job: Job,
        wav16: np.ndarray,
        carry: tuple[torch.Tensor, torch.Tensor] | None,
        prompt: tuple[torch.Tensor, torch.Tensor, np.ndarray] | None,
    ) -> Conditions:
        """Conditions of one chunk (spec §1.4 flows). SE: [carried context ; chunk] input with the
        carried tokens as prompt; TSE/VC: [speaker prompt ; chunk] with the fixed prompt codes."""
        tok = self.gen.loader.tokenizers
        what = str(job.inputs[self.spec.chunk_input])
        if prompt is not None:
            p_sem, p_ac, p16 = prompt
            feat = tok.ssl_features(np.concatenate([p16, wav16]), what=what)
        else:
            p_sem = torch.zeros(0, dtype=torch.long) if carry is None else carry[0]
            p_ac = torch.zeros(0, tok.num_codebooks, dtype=torch.long) if carry is None else carry[1]
            feat = tok.ssl_features(wav16, what=what)
        return Conditions(
            prompt_semantic=p_sem,
            target_len=int(feat.shape[0] - p_sem.shape[0]),
            acoustic_prompt=p_ac,
            finetune_cond=feat,
            ssl_forwards=0,  # chunk seeds are derived, not official runs: no hidden draws
        )

    def tts_blocks(
        self,
        job: Job,
        decoding: Decoding,
        info: dict,
        pieces: list[str],
        on_chunk: Callable | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[np.ndarray]:
        """TTS with long text: one generation per piece, same speaker prompt (`tts_piece_jobs`:
        each piece is a seeded run of its own, hidden SSL draws included), edges faded."""
        pjobs = tts_piece_jobs(job, pieces)
        info.update(chunks=len(pieces), piece_chars=[len(p) for p in pieces])
        done = 0
        for i, pjob in enumerate(pjobs):
            check_cancelled(cancelled)
            conds = self.gen.conditions(pjob)
            info["audio_seconds"] = conds.audio_seconds
            (_,), (codes,) = self.gen.codes([(pjob, conds)], decoding, cancelled)
            wav = piece_fades(self.gen.decode(codes), i, len(pjobs))
            done += wav.shape[0]
            yield wav
            self._progress(job, i, len(pieces), done, 0, on_chunk)


def check_cancelled(cancelled: Callable[[], bool] | None) -> None:
    """Raise `errors.Cancelled` when `cancelled()` is true."""
    if cancelled is not None and cancelled():
        raise Cancelled("generation cancelled")


def tts_piece_jobs(job: Job, pieces: list[str]) -> list[Job]:
    """The jobs of a TTS text spoken piece by piece: piece i gets seed `chunk_seed(seed, i)` and
    its share of a given duration."""
    durations = sentences.split_duration(job.duration, pieces) if job.duration else [None] * len(pieces)
    return [
        replace(job, text=piece, duration=dur, seed=chunking.chunk_seed(job.seed, i))
        for i, (piece, dur) in enumerate(zip(pieces, durations, strict=True))
    ]


def stream_piece_jobs(job: Job, max_chars: int) -> list[Job]:
    """The jobs of a streamed TTS text (`sentences.stream_pieces`: the first sentence alone, then
    pieces of at most max_chars): `tts_piece_jobs`, or the job itself when the text is one piece
    (then the stream equals the unstreamed request, seed included)."""
    pieces = sentences.stream_pieces(job.text or "", max_chars)
    return [job] if len(pieces) <= 1 else tts_piece_jobs(job, pieces)


def piece_fades(wav: np.ndarray, index: int, count: int) -> np.ndarray:
    """(N,) float32 piece `index` of `count` with the short fades of TTS joins (none on a lone piece)."""
    if count == 1:
        return wav
    fade = int(TTS_FADE_SECONDS * CODEC_SAMPLE_RATE)
    return chunking.edge_fades(wav, fade, fade_in=index > 0, fade_out=index < count - 1)

"""Tasks: user inputs → model conditions (spec §1.4), one small function per task.

A task is data (`TaskSpec`: which inputs it takes and which components it needs) plus a
function that turns a job's inputs into `Conditions` using the tokenizers.

This module imports no torch at import time: the job layer (planning, `metis --help`, usage
errors) reads `Job` and `TASKS` from it, and torch is imported only by the build functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from metis_cli.constants import TRAIN_MAX_SECONDS, TRAIN_MIN_SECONDS

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from metis_cli.core.tokenizer import Tokenizers


@dataclass(frozen=True)
class Job:
    """One unit of work: inputs on disk, an output path, per-job text and seed."""

    task: str  # "tts", "vc", "tse", "se", "l2s"
    inputs: dict[str, Path]  # role -> file (see TaskSpec.inputs)
    output: Path  # where the 24 kHz wav goes
    seed: int  # seeds this job's own random generator
    text: str | None = None  # TTS target text
    prompt_text: str | None = None  # TTS: transcript of the prompt
    language: str | None = None  # TTS target language (None = detect)
    prompt_language: str | None = None  # TTS prompt language (None = detect)
    duration: float | None = None  # TTS target duration in seconds (None = length rule)
    origin: str | None = None  # where the job came from, e.g. "jobs.csv:3" (reports, messages)
    job_id: str | None = None  # the manifest's optional "id" (echoed in reports)
    # an output file that appears between planning and placement: replaced (--overwrite), or the
    # job fails with "exists" (placement never replaces a file it did not plan to replace)
    overwrite: bool = field(default=False, compare=False)
    seed_drawn: bool = False  # the seed was drawn at random (no --seed, no seed field)

    def describe(self) -> str:
        """How messages name the job: its manifest line, else its main input."""
        if self.origin:
            return self.origin
        return str(next(iter(self.inputs.values()))) if self.inputs else str(self.output)


@dataclass
class Conditions:
    """What the generators need for one job (batch-1 shapes, no padding)."""

    prompt_semantic: torch.Tensor  # (Lp,) int64 semantic codes of the prompt (may be empty)
    target_len: int  # L: semantic frames to generate
    acoustic_prompt: torch.Tensor  # (Lp_ac, 12) int64 acoustic codes of the prompt (may be empty)
    phones: torch.Tensor | None = None  # (P,) int64 phone ids [prompt ; target] (TTS)
    finetune_cond: torch.Tensor | None = None  # (Lp + L, cond_dim) float (VC/TSE/SE/L2S)
    ssl_forwards: int = 0  # w2v-BERT forwards the official pipeline makes (hidden RNG draws, spec §12)
    audio_seconds: float = 0.0  # duration of the main input (for reports)
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    inputs: tuple[str, ...]  # required input roles, in CLI argument order
    optional_inputs: tuple[str, ...]  # optional input roles
    needs_text: bool  # TTS
    needs_acoustic_encoder: bool  # a prompt's acoustic codes are needed
    needs_visual: bool  # L2S
    build: Callable[[Job, Tokenizers], Conditions]
    chunk_input: str | None = None  # long inputs: the role that is cut into chunks (SE/TSE/VC)
    speaker_prompt: str | None = None  # long inputs: the fixed speaker prompt role (TSE/VC)
    long_text: bool = False  # long texts are spoken piece by piece (TTS)


def _empty_prompt(tok: Tokenizers) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    return torch.zeros(0, dtype=torch.long), torch.zeros(0, tok.num_codebooks, dtype=torch.long)


def build_se(job: Job, tok: Tokenizers) -> Conditions:
    """SE: no prompt; F = SSL(noisy); L = F.T; empty acoustic prompt."""
    wav16 = tok.load16(job.inputs["input"])
    feat = tok.ssl_features(wav16, what=str(job.inputs["input"]))  # (T, D)
    prompt_sem, prompt_ac = _empty_prompt(tok)
    return Conditions(
        prompt_semantic=prompt_sem,
        target_len=feat.shape[0],
        acoustic_prompt=prompt_ac,
        finetune_cond=feat,
        ssl_forwards=1,
        audio_seconds=len(wav16) / tok.ssl_rate,
    )


PROMPT_RANGE_SECONDS = (TRAIN_MIN_SECONDS, TRAIN_MAX_SECONDS)  # speaker prompts of the training data


def prompt_warnings(path: object, wav16: object, rate: int) -> list[str]:
    """A warning when a speaker prompt lies outside the 3-30 s the models were trained on."""
    seconds = len(wav16) / rate  # type: ignore[arg-type]
    lo, hi = PROMPT_RANGE_SECONDS
    if lo <= seconds <= hi:
        return []
    return [f"{path}: speaker prompt is {seconds:.1f} s, outside the {lo:g}-{hi:g} s of the training data"]


def prompt_codes(tok: Tokenizers, path: Path) -> tuple[torch.Tensor, torch.Tensor, object]:
    """A speaker prompt's (Lp,) semantic codes, (Lp_ac, 12) acoustic codes and (N,) 16 kHz samples,
    through the tokenizers' `PromptCache` when they have one (the same values either way)."""
    from metis_cli.core.prompt_cache import PromptEncoding

    def encode() -> PromptEncoding:
        wav16 = tok.load16(path)
        sem = tok.semantic_codes(tok.ssl_features(wav16, what=str(path)))  # (Lp,)
        ac = tok.acoustic_codes(tok.load24(path), what=str(path))  # (Lp_ac, 12)
        return PromptEncoding(sem, ac, wav16)

    cache = tok.prompt_cache
    enc = encode() if cache is None else cache.get_or_encode(path, tok.cache_scope, encode)
    return enc.semantic.to(tok.device), enc.acoustic.to(tok.device), enc.wav16


def _build_pair(job: Job, tok: Tokenizers, source_role: str, prompt_role: str) -> Conditions:
    """VC / TSE: prompt and source concatenated as 16 kHz waveforms; F = SSL(concat)."""
    import numpy as np

    prompt_sem, prompt_ac, prompt16 = prompt_codes(tok, job.inputs[prompt_role])
    src16 = tok.load16(job.inputs[source_role])
    feat = tok.ssl_features(np.concatenate([prompt16, src16]), what=str(job.inputs[source_role]))
    target_len = feat.shape[0] - prompt_sem.shape[0]
    if target_len <= 0:
        from metis_cli.errors import AudioError

        raise AudioError(f"{job.inputs[source_role]}: too short to give a target frame after the prompt")
    return Conditions(
        prompt_semantic=prompt_sem,
        target_len=target_len,
        acoustic_prompt=prompt_ac,
        finetune_cond=feat,
        ssl_forwards=2,
        audio_seconds=len(src16) / tok.ssl_rate,
        info={"warnings": prompt_warnings(job.inputs[prompt_role], prompt16, tok.ssl_rate)},
    )


def build_vc(job: Job, tok: Tokenizers) -> Conditions:
    return _build_pair(job, tok, "source", "reference")


def build_tse(job: Job, tok: Tokenizers) -> Conditions:
    return _build_pair(job, tok, "mix", "enrol")


def build_tts(job: Job, tok: Tokenizers) -> Conditions:
    """TTS: phones of [prompt text ; target text]; L by the byte-ratio rule or --duration."""
    import torch

    from metis_cli import text as textfe
    from metis_cli.errors import TextError

    if not job.text or not job.text.strip():
        raise TextError("empty target text")
    if not job.prompt_text or not job.prompt_text.strip():
        raise TextError(f"{job.inputs['prompt']}: the prompt's transcript (--prompt-text) is empty")
    prompt_sem, prompt_ac, wav16 = prompt_codes(tok, job.inputs["prompt"])
    prompt_ids, target_ids = textfe.tts_phone_ids(
        job.prompt_text, job.text, prompt_language=job.prompt_language, target_language=job.language
    )
    target_len = textfe.target_length(prompt_sem.shape[0], job.prompt_text, job.text, job.duration)
    if target_len <= 0:
        raise TextError(f"target length is {target_len} frames: give a longer text or --duration")
    return Conditions(
        prompt_semantic=prompt_sem,
        target_len=target_len,
        acoustic_prompt=prompt_ac,
        phones=torch.tensor(prompt_ids + target_ids, dtype=torch.long),
        ssl_forwards=1,
        audio_seconds=len(wav16) / tok.ssl_rate,
        info={
            "phones": len(prompt_ids) + len(target_ids),
            "warnings": prompt_warnings(job.inputs["prompt"], wav16, tok.ssl_rate),
        },
    )


def build_l2s(job: Job, tok: Tokenizers) -> Conditions:
    """L2S: visual features at 25 fps → ×2 to 50 Hz, zero rows for the prompt (spec §10)."""
    from metis_cli.nn.stage1 import l2s_condition

    feats = tok.visual_features(job.inputs["video"], job.inputs.get("landmarks"))  # (T_v, D) at 25 fps
    if "prompt" in job.inputs:
        prompt_sem, prompt_ac, p16 = prompt_codes(tok, job.inputs["prompt"])
        warnings = prompt_warnings(job.inputs["prompt"], p16, tok.ssl_rate)
        forwards = 1
    else:  # the official code crashes here; we use an empty prompt
        prompt_sem, prompt_ac = _empty_prompt(tok)
        warnings, forwards = [], 0
    cond = l2s_condition(feats.float(), prompt_sem.shape[0])
    return Conditions(
        prompt_semantic=prompt_sem,
        target_len=cond.shape[0] - prompt_sem.shape[0],
        acoustic_prompt=prompt_ac,
        finetune_cond=cond,
        ssl_forwards=forwards,
        audio_seconds=feats.shape[0] / 25.0,
        info={"warnings": warnings},
    )


TASKS: dict[str, TaskSpec] = {
    "se": TaskSpec("se", ("input",), (), False, False, False, build_se, chunk_input="input"),
    "tse": TaskSpec(
        "tse", ("mix", "enrol"), (), False, True, False, build_tse, chunk_input="mix", speaker_prompt="enrol"
    ),
    "vc": TaskSpec(
        "vc",
        ("source", "reference"),
        (),
        False,
        True,
        False,
        build_vc,
        chunk_input="source",
        speaker_prompt="reference",
    ),  # fmt: skip
    "tts": TaskSpec("tts", ("prompt",), (), True, True, False, build_tts, long_text=True),
    "l2s": TaskSpec("l2s", ("video",), ("prompt", "landmarks"), False, True, True, build_l2s),
}

"""The batch generator: conditions → stage 1 → S2A → acoustic decoder for one padded batch.

Every job owns a `torch.Generator` seeded with its seed. On CPU it first gives out the official
pipeline's hidden SSL draws (spec §12: 24 scalar uniforms per w2v-BERT forward, `ssl_forwards`
of them per job), so a batch-1 fp32 run reproduces a seeded official run token for token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from metis_cli.constants import SSL_NUM_LAYERS_OFFICIAL
from metis_cli.core.decoding import Decoding
from metis_cli.core.tasks import Conditions, Job
from metis_cli.engine.loader import ModelLoader, StageStats
from metis_cli.errors import Cancelled


class StageTimer:
    """Adds a stage's wall and CPU seconds to `stats` (synchronising the device around it)."""

    def __init__(self, stats: StageStats, stage: str, sync: Callable[[], None]) -> None:
        self.stats, self.stage, self.sync = stats, stage, sync

    def __enter__(self) -> StageTimer:
        self.sync()
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sync()
        self.stats.add(self.stage, time.perf_counter() - self.w0, time.process_time() - self.c0)


class CancellableNoise:
    """A noise source that raises `Cancelled` before a draw once `cancelled()` is true: every
    decoding step draws noise, so a cancelled batch stops within one step."""

    def __init__(self, noise: Any, cancelled: Callable[[], bool]) -> None:
        self.noise, self.cancelled = noise, cancelled

    def uniform(self, shape: tuple[int, ...], kind: str, device: torch.device | None = None) -> torch.Tensor:
        if self.cancelled():
            raise Cancelled("generation cancelled")
        return self.noise.uniform(shape, kind, device)


class BatchGenerator:
    """Generates acoustic codes and waveforms for a batch of (job, conditions)."""

    def __init__(self, loader: ModelLoader) -> None:
        self.loader = loader

    def timer(self, stage: str) -> StageTimer:
        return StageTimer(self.loader.stats, stage, self.loader.sync)

    def conditions(self, job: Job) -> Conditions:
        """The task's conditions of one job (reads its inputs; spec §1.4)."""
        self.loader.enter("conditions")
        with self.timer("conditions"):
            return self.loader.spec.build(job, self.loader.tokenizers)

    def generator(self, job: Job, conds: Conditions) -> torch.Generator:
        """The job's own generator, advanced past the official hidden SSL draws on CPU."""
        gen = torch.Generator(device=self.loader.device).manual_seed(job.seed)
        if self.loader.device.type == "cpu":
            from metis_cli.core.ssl import official_hidden_draws

            for _ in range(conds.ssl_forwards):
                official_hidden_draws(gen, SSL_NUM_LAYERS_OFFICIAL)
        return gen

    def codes(
        self,
        ready: list[tuple[Job, Conditions]],
        decoding: Decoding,
        cancelled: Callable[[], bool] | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Stage 1 + S2A: per item the generated semantic codes (L,) and acoustic codes (L_ac, 12).
        `cancelled`: checked before every decoding step (raises `errors.Cancelled` once true)."""
        from metis_cli.core.decoding import TorchNoise, metis_semantic_to_acoustic, stage1_generate

        ld = self.loader
        noise: list[Any] = [TorchNoise(self.generator(job, c)) for job, c in ready]
        if cancelled is not None:
            noise = [CancellableNoise(n, cancelled) for n in noise]
        fast = {k: getattr(ld.options, k) for k in ("fused_cfg", "static_shapes", "cuda_graphs")}
        dev = ld.device
        conds = [c for _, c in ready]
        ld.enter("stage1")
        stage1 = ld.component("stage1")
        with self.timer("stage1"):
            semantic = stage1_generate(
                stage1,
                [c.prompt_semantic.to(dev) for c in conds],
                [c.target_len for c in conds],
                [c.phones.to(dev) for c in conds] if conds[0].phones is not None else None,
                [c.finetune_cond.to(dev, ld.dtype) for c in conds]
                if conds[0].finetune_cond is not None
                else None,
                decoding.stage1(**fast),
                noise,
            )
        del stage1  # else this reference keeps the model alive after a release
        full_semantic = [
            torch.cat([c.prompt_semantic.to(dev), s]) for c, s in zip(conds, semantic, strict=True)
        ]
        ld.enter("s2a")
        s1, sf = ld.component("s2a_1layer"), ld.component("s2a_full")
        with self.timer("s2a"):
            codes = metis_semantic_to_acoustic(
                s1,
                sf,
                full_semantic,
                [c.acoustic_prompt.to(dev) for c in conds],
                noise,
                decoding,
                **fast,
            )
        del s1, sf
        return semantic, codes

    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """(L_ac, 12) acoustic codes → (L_ac * 480,) float32 waveform at 24 kHz."""
        self.loader.enter("decode")
        with self.timer("decode"):
            return self.loader.tokenizers.decode(codes)

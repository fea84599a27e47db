"""Fine-tuning and pre-training of the Metis stage-1 model (spec §6.3, §8).

* `objective` – the training forward: random time, prompt length and mask; x_t; masked loss.
* `data`      – training examples on disk and the content-addressed feature cache.
* `model`     – trainable models (LoRA + gated adapter, or full) and the files they export.
* `loop`      – the optimisation loop: `Trainer` (step, evaluate, save, resume, run), bit-identical resume.
* `dist`      – torchrun launches: process group, row shares, DistributedDataParallel.
* `run`       – `finetune(...)` and `pretrain(...)`, what the CLI calls.
"""

from __future__ import annotations

from metis_cli.train.run import FinetuneResult, finetune, pretrain

__all__ = ["FinetuneResult", "finetune", "pretrain"]

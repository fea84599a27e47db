"""`finetune(...)` and `pretrain(...)`: data → cached features → training → a model folder.

The folder written is a drop-in model: `metis enhance --model DIR` (or `api.load("se",
model=DIR)`) loads it through the same strict loaders as the released files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..cards import DEFAULT_MODEL, ModelStore, get_card
from ..engine import Engine, EngineOptions, resolve_device
from ..errors import InputError
from . import data as D
from .loop import STATE_FILE, History, TrainOptions, evaluate, train
from .model import Trainable, build_finetune, build_pretrain, export

log = logging.getLogger(__name__)

FINETUNE_TASKS = ("se", "tse", "vc")


def default_cache_dir() -> Path:
    """`$METIS_CACHE_DIR/features`, else `~/.cache/metis/features`."""
    import os

    root = os.environ.get("METIS_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "metis") / "features"


@dataclass
class FinetuneResult:
    out: Path  # the model folder
    card: Path  # out/card.json
    history: History  # training loss per step, held-out evaluations
    start_eval: dict[str, float] | None  # held-out loss/accuracy of the start model (if --val)
    final_eval: dict[str, float] | None  # held-out loss/accuracy after training (if --val)
    cache_hits: int
    cache_misses: int


def _check_out(out: Path, resume: bool) -> None:
    if resume:
        return
    if (out / STATE_FILE).exists():
        raise InputError(f"{out}: holds a training run already (use --resume to continue it)")


def _engine(task: str, store: ModelStore, device: str) -> Engine:
    """An engine used only for its tokenizers (SSL features, semantic codes)."""
    return Engine(task, None, store, EngineOptions(device=device))


def _run(
    tr: Trainable,
    items: list[D.Item],
    val_items: list[D.Item],
    out: Path,
    opts: TrainOptions,
    *,
    task: str | None,
    name: str,
    resume: bool,
    info: dict[str, Any],
    cache: D.FeatureCache,
    on_step: Callable[[int, float], None] | None,
) -> FinetuneResult:
    explicit = task is not None
    start_eval = None
    if val_items and not resume:
        start_eval = evaluate(tr, val_items, explicit_prompt=explicit, cfg_scale=opts.cfg_scale)
        log.info("start model: held-out loss %.4f, accuracy %.4f", start_eval["loss"], start_eval["accuracy"])

    def on_save(step: int, history: History) -> None:
        meta = {**info, "steps": step, "last_loss": history.loss[-1] if history.loss else None}
        if history.val:
            meta["held_out"] = history.val[-1]
        export(tr, out, task, name, meta)

    history = train(
        tr,
        items,
        out,
        opts,
        explicit_prompt=explicit,
        resume=resume,
        val_items=val_items,
        on_save=on_save,
        on_step=on_step,
    )
    return FinetuneResult(
        out=out,
        card=out / "card.json",
        history=history,
        start_eval=start_eval,
        final_eval=history.val[-1] if history.val else None,
        cache_hits=cache.hits,
        cache_misses=cache.misses,
    )


def finetune(
    task: str,
    data: Path,
    out: Path,
    *,
    model: str | None = None,
    val: Path | None = None,
    full: bool = False,
    rank: int | None = None,
    alpha: float | None = None,
    options: TrainOptions | None = None,
    resume: bool = False,
    name: str | None = None,
    cache_dir: Path | None = None,
    checkpoint_dir: str | Path | None = None,
    offline: bool | None = None,
    device: str = "cpu",
    on_step: Callable[[int, float], None] | None = None,
) -> FinetuneResult:
    """Fine-tune stage 1 for `task` (se, tse, vc) on the examples in `data`; write `out/`.

    model: start card or folder (default: the task's official model, continuing its LoRA);
    `metis-base` or a pretrain folder starts a fresh LoRA + zero-gated adapter.
    """
    if task not in FINETUNE_TASKS:
        raise InputError(f"fine-tuning supports tasks {', '.join(FINETUNE_TASKS)}, not '{task}'")
    opts = options or TrainOptions()
    out = Path(out)
    _check_out(out, resume)
    store = ModelStore(checkpoint_dir, offline)
    start = get_card(model or DEFAULT_MODEL[task])
    engine = _engine(task, store, device)
    cache = D.FeatureCache(engine, Path(cache_dir) if cache_dir else default_cache_dir())
    items = [D.finetune_item(cache, ex) for ex in D.read_examples(Path(data))]
    val_items = [D.finetune_item(cache, ex) for ex in D.read_examples(Path(val))] if val else []
    engine.release("ssl", "semantic_codec")
    log.info(
        "%d training items, %d held-out (cache: %d hits, %d computed)",
        len(items),
        len(val_items),
        cache.hits,
        cache.misses,
    )
    dev = resolve_device(device)
    tr = build_finetune(store, start, task, full=full, rank=rank, alpha=alpha, seed=opts.seed, device=dev)
    info = {
        "task": task,
        "start": start.name,
        "mode": tr.mode,
        "lora_r": tr.r,
        "lora_alpha": tr.alpha,
        "examples": len(items),
        "options": asdict(opts),
    }
    return _run(
        tr,
        items,
        val_items,
        out,
        opts,
        task=task,
        name=name or out.resolve().name,
        resume=resume,
        info=info,
        cache=cache,
        on_step=on_step,
    )


def pretrain(
    data: Path,
    out: Path,
    *,
    model: str = "metis-base",
    val: Path | None = None,
    options: TrainOptions | None = None,
    resume: bool = False,
    name: str | None = None,
    cache_dir: Path | None = None,
    checkpoint_dir: str | Path | None = None,
    offline: bool | None = None,
    device: str = "cpu",
    on_step: Callable[[int, float], None] | None = None,
) -> FinetuneResult:
    """Continue the masked generative pre-training of a base stage-1 model on plain audio."""
    opts = options or TrainOptions()
    out = Path(out)
    _check_out(out, resume)
    store = ModelStore(checkpoint_dir, offline)
    start = get_card(model)
    engine = _engine("se", store, device)  # any task: only its tokenizers are used
    cache = D.FeatureCache(engine, Path(cache_dir) if cache_dir else default_cache_dir())
    items = [D.pretrain_item(cache, f) for f in D.read_audio_list(Path(data))]
    val_items = [D.pretrain_item(cache, f) for f in D.read_audio_list(Path(val))] if val else []
    engine.release("ssl", "semantic_codec")
    tr = build_pretrain(store, start, resolve_device(device))
    torch.manual_seed(opts.seed)
    info = {"start": start.name, "mode": "pretrain", "files": len(items), "options": asdict(opts)}
    return _run(
        tr,
        items,
        val_items,
        out,
        opts,
        task=None,
        name=name or out.resolve().name,
        resume=resume,
        info=info,
        cache=cache,
        on_step=on_step,
    )

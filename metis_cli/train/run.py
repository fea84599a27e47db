"""`finetune(...)` and `pretrain(...)`: data → cached features → training → a model folder.

The folder written is a drop-in model: `metis enhance --model DIR` (or `api.load("se",
model=DIR)`) loads it through the same strict loaders as the released files.

Under torchrun (`WORLD_SIZE` > 1) both join the process group (`dist.session`): every rank
computes the features of its share of the examples into the shared cache, all meet at a
barrier and then read the cache; only rank 0 reports skipped examples, evaluates and writes
the folder.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from metis_cli.assets.cache import cache_root
from metis_cli.assets.cards import DEFAULT_MODEL, ModelStore, get_card
from metis_cli.core.devices import resolve_device
from metis_cli.engine.loader import ModelLoader
from metis_cli.errors import InputError, UsageError
from metis_cli.options import EngineOptions
from metis_cli.train import data as training_data
from metis_cli.train.dist import DistContext, session
from metis_cli.train.loop import (
    STATE_FILE,
    History,
    TrainOptions,
    evaluate,
    resolve_cfg_scale,
    total_steps,
    train,
)
from metis_cli.train.model import Trainable, build_finetune, build_pretrain, build_scratch, export

log = logging.getLogger(__name__)

FINETUNE_TASKS = ("se", "tse", "vc", "tts", "l2s")


def default_cache_dir() -> Path:
    """`$METIS_CACHE_DIR/features`, else `~/.cache/metis/features` (`assets.cache.cache_root`)."""
    return cache_root() / "features"


@dataclass
class FinetuneResult:
    out: Path  # the model folder
    card: Path  # out/card.json
    history: History  # training loss per step, held-out evaluations
    start_eval: dict[str, float] | None  # held-out loss/accuracy of the start model (if --val)
    final_eval: dict[str, float] | None  # held-out loss/accuracy after training (if --val)
    cache_hits: int
    cache_misses: int
    examples: int = 0  # training examples used
    skipped: list[str] = field(default_factory=list)  # one report line per skipped example
    total_steps: int = 0  # the run's planned total (the schedule's)


def _start_card(name: str):
    """The start model's card; an unknown name is a usage error (exit 2 in the CLI)."""
    try:
        return get_card(name)
    except UsageError:
        raise
    except InputError as exc:
        raise UsageError(f"--base: {exc}") from None


def _check_out(out: Path, resume: bool) -> None:
    if resume:
        return
    if (out / STATE_FILE).exists():
        raise UsageError(f"{out}: holds a training run already (use --resume to continue it)")


def _engine(task: str, store: ModelStore, device: str, visual_checkpoint: Path | None = None) -> ModelLoader:
    """The model loader, for its tokenizers (SSL features, semantic codes; l2s: visual features)."""
    return ModelLoader(task, None, store, EngineOptions(device=device, visual_checkpoint=visual_checkpoint))


def _run(
    tr: Trainable,
    items: list[training_data.Item],
    val_items: list[training_data.Item],
    out: Path,
    opts: TrainOptions,
    *,
    task: str | None,
    explicit: bool,
    name: str,
    resume: bool,
    info: dict[str, Any],
    cache: training_data.FeatureCache,
    skipped: list[str],
    on_step: Callable[[dict, int], None] | None,
    ctx: DistContext,
) -> FinetuneResult:
    opts = replace(opts, cfg_scale=resolve_cfg_scale(tr, opts))
    info = {**info, "options": asdict(opts)}
    if ctx.enabled:
        info["processes"] = ctx.world
    start_eval = None
    if val_items and not resume and ctx.is_main:
        start_eval = evaluate(
            tr, val_items, explicit_prompt=explicit, cfg_scale=opts.cfg_scale, bf16=opts.bf16
        )
        log.info("start model: held-out loss %.4f, accuracy %.4f", start_eval["loss"], start_eval["accuracy"])

    def on_save(step: int, history: History) -> None:
        meta = {**info, "steps": step, "last_loss": history.loss[-1] if history.loss else None}
        if history.val:
            meta["held_out"] = history.val[-1]
        export(tr, out, task, name, meta)

    run_info = {k: info[k] for k in ("task", "start", "mode", "lora_r") if k in info}
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
        run_info=run_info,
        dist=ctx,
    )
    return FinetuneResult(
        out=out,
        card=out / "card.json",
        history=history,
        start_eval=start_eval,
        final_eval=history.val[-1] if history.val else None,
        cache_hits=cache.hits,
        cache_misses=cache.misses,
        examples=len(items),
        skipped=skipped,
        total_steps=total_steps(len(items), opts),
    )


def _build_shared(
    ctx: DistContext,
    cache: training_data.FeatureCache,
    device: str,
    warm: Callable[[int, int], None],
    build: Callable[[], Any],
) -> Any:
    """`build()` after every rank computed its share of the feature cache.

    Under torchrun each rank first runs `warm(rank, world)` (the features of every world-th
    example, starting at its rank; problems are ignored there and reported by `build`), then all
    wait at a barrier and `build()` reads the cache. The cache counters then describe the whole
    group: `misses` = features computed by any rank, `hits` = the rest of this rank's lookups.
    """
    if not ctx.enabled:
        return build()
    m0 = cache.misses
    warm(ctx.rank, ctx.world)
    mine = cache.misses - m0
    log.info("rank %d computed %d feature(s) of its share", ctx.rank, mine)
    ctx.barrier()
    h1, m1 = cache.hits, cache.misses
    result = build()
    lookups = (cache.hits - h1) + (cache.misses - m1)
    dev = torch.device(device) if torch.device(device).type == "cuda" else torch.device("cpu")
    computed = int(ctx.all_sum(torch.tensor([float(mine)], device=dev)).item()) + (cache.misses - m1)
    cache.hits, cache.misses = max(0, lookups - computed), computed
    return result


def _ignore_problems(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - reported by the full build that follows
        pass


def _skip_reporter(on_skip: Callable[[str], None] | None, skipped: list[str]) -> Callable[[str], None]:
    def report(line: str) -> None:
        skipped.append(line)
        (on_skip or log.warning)(line)

    return report


def finetune(
    task: str,
    data: Path,
    out: Path,
    *,
    base: str | None = None,
    val: Path | None = None,
    full: bool = False,
    lora_r: int | None = None,
    lora_alpha: float | None = None,
    options: TrainOptions | None = None,
    resume: bool = False,
    name: str | None = None,
    cache_dir: Path | None = None,
    checkpoint_dir: str | Path | None = None,
    offline: bool | None = None,
    device: str = "cpu",
    visual_checkpoint: str | Path | None = None,
    on_step: Callable[[dict, int], None] | None = None,
    on_skip: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Fine-tune stage 1 for `task` (se, tse, vc, tts, l2s) on the manifest `data`; write `out/`.

    base: start card or folder (default: the task's released model, continuing its LoRA;
    `metis-base` or a pretrain folder starts a fresh LoRA + zero-gated adapter; l2s starts
    from `metis-l2s` or an l2s folder and exports a merged `stage1.safetensors`).
    visual_checkpoint: the Auto-AVSR `model.pth` (model.json beside it), required for l2s:
    the visual features of the condition come from it, as at inference.
    on_skip(line) gets one report line per bad manifest line or unusable example (skipped).
    Launched by torchrun, every process calls this; see the module doc.
    """
    with session(device) as (ctx, device):
        return _finetune(
            ctx,
            task,
            data,
            out,
            base=base,
            val=val,
            full=full,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            options=options,
            resume=resume,
            name=name,
            cache_dir=cache_dir,
            checkpoint_dir=checkpoint_dir,
            offline=offline,
            device=device,
            visual_checkpoint=visual_checkpoint,
            on_step=on_step,
            on_skip=on_skip,
        )


def _finetune(
    ctx: DistContext,
    task: str,
    data: Path,
    out: Path,
    *,
    base: str | None,
    val: Path | None,
    full: bool,
    lora_r: int | None,
    lora_alpha: float | None,
    options: TrainOptions | None,
    resume: bool,
    name: str | None,
    cache_dir: Path | None,
    checkpoint_dir: str | Path | None,
    offline: bool | None,
    device: str,
    visual_checkpoint: str | Path | None,
    on_step: Callable[[dict, int], None] | None,
    on_skip: Callable[[str], None] | None,
) -> FinetuneResult:
    if task not in FINETUNE_TASKS:
        raise UsageError(f"fine-tuning supports tasks {', '.join(FINETUNE_TASKS)}, not '{task}'")
    visual = _visual_checkpoint(task, visual_checkpoint)
    opts = options or TrainOptions()
    out = Path(out)
    _check_out(out, resume)
    store = ModelStore(checkpoint_dir, offline)
    start = _start_card(base or DEFAULT_MODEL.get(task, "metis-base"))
    skipped: list[str] = []
    report = _skip_reporter(on_skip if ctx.is_main else (lambda line: None), skipped)
    examples = _read_examples(Path(data), task, report)
    val_examples = _read_examples(Path(val), task, report) if val else []
    engine = _engine(task, store, device, visual)
    cache = training_data.FeatureCache(engine, Path(cache_dir) if cache_dir else default_cache_dir())

    def build() -> tuple[list[training_data.Item], list[training_data.Item]]:
        return training_data.build_items(cache, examples, task, report), training_data.build_items(
            cache, val_examples, task, report
        )

    def warm(rank: int, world: int) -> None:
        for share in (examples[rank::world], val_examples[rank::world]):
            training_data.build_items(cache, share, task, lambda line: None)

    items, val_items = _build_shared(ctx, cache, device, warm, build)
    engine.release("ssl", "semantic_codec", "visual")
    if not items:
        raise InputError(f"{data}: no usable training examples ({len(skipped)} skipped)")
    _log_items(items, val_items, skipped, cache)
    tr = build_finetune(
        store,
        start,
        task,
        full=full,
        rank=lora_r,
        alpha=lora_alpha,
        seed=opts.seed,
        device=resolve_device(device),
    )
    _check_cond_dim(items, tr, start.name, visual)
    info = _finetune_info(task, start.name, tr, len(items), len(skipped), opts, visual)
    return _run(
        tr,
        items,
        val_items,
        out,
        opts,
        task=task,
        explicit=task != "tts",
        name=name or out.resolve().name,
        resume=resume,
        info=info,
        cache=cache,
        skipped=skipped,
        on_step=on_step,
        ctx=ctx,
    )


def _read_examples(path: Path, task: str, report: Callable[[str], None]) -> list[training_data.Example]:
    """The manifest's examples; each problem line goes to `report`."""
    examples, problems = training_data.read_examples(path, task)
    for line in problems:
        report(line)
    return examples


def _log_items(
    items: list[training_data.Item],
    val_items: list[training_data.Item],
    skipped: list[str],
    cache: training_data.FeatureCache,
) -> None:
    log.info(
        "%d training items, %d held-out, %d skipped (cache: %d hits, %d computed)",
        len(items),
        len(val_items),
        len(skipped),
        cache.hits,
        cache.misses,
    )


def _check_cond_dim(items: list[training_data.Item], tr: Trainable, start: str, visual: Path | None) -> None:
    """InputError when the items' condition features do not fit the model's `cond_dim`."""
    cond_dim = items[0].cond.shape[1] if items[0].cond is not None else None
    if cond_dim is not None and cond_dim != tr.model.cfg.cond_dim:
        source = f"the visual encoder {visual}" if visual else "the SSL model"
        raise InputError(
            f"{source} gives {cond_dim}-d features but model '{start}' reads {tr.model.cfg.cond_dim}"
        )


def _finetune_info(
    task: str, start: str, tr: Trainable, examples: int, skipped: int, opts: TrainOptions, visual: Path | None
) -> dict[str, Any]:
    """The run description stored in the checkpoint and the exported card."""
    info = {
        "task": task,
        "start": start,
        "mode": tr.mode,
        "lora_r": tr.r,
        "lora_alpha": tr.alpha,
        "examples": examples,
        "skipped": skipped,
        "options": asdict(opts),
    }
    if visual is not None:
        info["visual_checkpoint"] = str(visual)
    return info


def _visual_checkpoint(task: str, path: str | Path | None) -> Path | None:
    """The visual checkpoint of an l2s run (required, must exist); None for other tasks."""
    if task != "l2s":
        return None
    if path is None:
        raise UsageError(
            "l2s fine-tuning needs the visual encoder: pass --visual-checkpoint model.pth "
            "(or set METIS_VISUAL_CHECKPOINT; see `metis models`)"
        )
    if not Path(path).is_file():
        raise UsageError(f"{path}: visual encoder checkpoint not found (--visual-checkpoint)")
    return Path(path)


def read_config_block(path: Path) -> dict[str, Any]:
    """The `t2s_model` block of a JSON config (top level, under `model`, or the block itself)."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the config ({exc})") from None
    if isinstance(d, dict):
        for block in (d.get("t2s_model"), (d.get("model") or {}).get("t2s_model"), d):
            if isinstance(block, dict) and "hidden_size" in block:
                return block
    raise UsageError(f"{path}: no t2s_model block (hidden_size, num_layers, ...) found")


def pretrain(
    data: Path,
    out: Path,
    *,
    base: str | None = "metis-base",
    config: Path | None = None,
    val: Path | None = None,
    options: TrainOptions | None = None,
    resume: bool = False,
    name: str | None = None,
    cache_dir: Path | None = None,
    checkpoint_dir: str | Path | None = None,
    offline: bool | None = None,
    device: str = "cpu",
    on_step: Callable[[dict, int], None] | None = None,
) -> FinetuneResult:
    """Masked generative pre-training of a base stage-1 model on plain audio.

    Continues `base` (default `metis-base`), or starts from random weights built from the
    `t2s_model` block of `config` (then `base` is ignored). Launched by torchrun, every process
    calls this; see the module doc.
    """
    with session(device) as (ctx, device):
        return _pretrain(
            ctx,
            data,
            out,
            base=base,
            config=config,
            val=val,
            options=options,
            resume=resume,
            name=name,
            cache_dir=cache_dir,
            checkpoint_dir=checkpoint_dir,
            offline=offline,
            device=device,
            on_step=on_step,
        )


def _pretrain(
    ctx: DistContext,
    data: Path,
    out: Path,
    *,
    base: str | None,
    config: Path | None,
    val: Path | None,
    options: TrainOptions | None,
    resume: bool,
    name: str | None,
    cache_dir: Path | None,
    checkpoint_dir: str | Path | None,
    offline: bool | None,
    device: str,
    on_step: Callable[[dict, int], None] | None,
) -> FinetuneResult:
    opts = options or TrainOptions()
    out = Path(out)
    _check_out(out, resume)
    store = ModelStore(checkpoint_dir, offline)
    engine = _engine("se", store, device)  # any task: only its tokenizers are used
    cache = training_data.FeatureCache(engine, Path(cache_dir) if cache_dir else default_cache_dir())
    files = training_data.read_audio_list(Path(data))
    val_files = training_data.read_audio_list(Path(val)) if val else []

    def warm(rank: int, world: int) -> None:
        for f in files[rank::world] + val_files[rank::world]:
            _ignore_problems(lambda f=f: training_data.pretrain_item(cache, f))

    items, val_items = _build_shared(
        ctx,
        cache,
        device,
        warm,
        lambda: (
            [training_data.pretrain_item(cache, f) for f in files],
            [training_data.pretrain_item(cache, f) for f in val_files],
        ),
    )
    engine.release("ssl", "semantic_codec")
    dev = resolve_device(device)
    if config is not None:
        block = read_config_block(Path(config))
        tr = build_scratch(block, opts.seed, dev)
        vocab = int(block["cond_codebook_size"])
        top = max(int(it.x0.max()) for it in items)
        if top >= vocab:
            raise InputError(
                f"{config}: cond_codebook_size {vocab} is smaller than the codec's codes ({top + 1})"
            )
        start_name = f"scratch ({Path(config).name})"
    else:
        start = _start_card(base or "metis-base")
        tr = build_pretrain(store, start, dev)
        start_name = start.name
    torch.manual_seed(opts.seed)
    info = {"start": start_name, "mode": "pretrain", "files": len(items), "options": asdict(opts)}
    return _run(
        tr,
        items,
        val_items,
        out,
        opts,
        task=None,
        explicit=False,
        name=name or out.resolve().name,
        resume=resume,
        info=info,
        cache=cache,
        skipped=[],
        on_step=on_step,
        ctx=ctx,
    )

"""The optimisation loop: AdamW, linear warm-up then a constant rate, resumable bit for bit.

Every random choice (which items form a batch, crop offsets, t, prompt lengths, masks) comes
from one CPU `torch.Generator` seeded with `seed`. A checkpoint (`train_state.pt`) holds the
trained tensors, the optimizer and scheduler states, that generator's state, the step and the
loss history, so on CPU `N/2 steps + resume + N/2 steps` gives the same weights as `N` steps.
The schedule does not depend on the total number of steps, so a run may be extended.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import InputError
from . import objective
from .data import Item
from .model import Trainable

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"


@dataclass(frozen=True)
class TrainOptions:
    steps: int = 1000  # total optimizer steps (a resumed run continues up to this)
    batch_size: int = 8  # items per step
    lr: float = 1e-4  # peak learning rate
    warmup: int = 100  # linear warm-up steps
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    max_frames: int = 500  # random crop of longer items (50 frames = 1 s)
    seed: int = 0
    save_every: int = 500  # checkpoint (and export) interval in steps; 0 = only at the end
    val_every: int = 0  # held-out evaluation interval in steps; 0 = only at the end
    cfg_scale: float = 0.15  # pretrain: probability of an item batch without prompt


@dataclass
class History:
    loss: list[float] = field(default_factory=list)  # training loss per step (nats)
    val: list[dict] = field(default_factory=list)  # {"step", "loss", "accuracy"}


@dataclass
class Batch:
    x0: torch.Tensor  # (B, L) int64, padded with 0
    keep: torch.Tensor  # (B, L) float32, 1 = real frame
    prompt_len: torch.Tensor  # (B,) int64
    cond: torch.Tensor | None  # (B, L, D) float32 or None


def crop(item: Item, max_frames: int, gen: torch.Generator) -> Item:
    """Keep the prompt and a random window of the rest so that at most `max_frames` remain."""
    n, p = len(item), item.prompt_len
    if n <= max_frames:
        return item
    if max_frames <= p:
        raise InputError(f"--max-frames {max_frames} leaves no target frame after a {p}-frame prompt")
    width = max_frames - p
    off = p + int(torch.randint(0, n - p - width + 1, (1,), generator=gen))
    idx = torch.cat([torch.arange(p), torch.arange(off, off + width)])
    return Item(item.x0[idx], p, item.cond[idx] if item.cond is not None else None)


def collate(items: Sequence[Item], device: torch.device) -> Batch:
    """Pad items to the longest; keep marks real frames."""
    L = max(len(it) for it in items)
    B = len(items)
    x0 = torch.zeros(B, L, dtype=torch.long)
    keep = torch.zeros(B, L)
    cond = None
    if items[0].cond is not None:
        cond = torch.zeros(B, L, items[0].cond.shape[1])
    for b, it in enumerate(items):
        x0[b, : len(it)] = it.x0
        keep[b, : len(it)] = 1.0
        if cond is not None:
            cond[b, : len(it)] = it.cond
    plen = torch.tensor([it.prompt_len for it in items], dtype=torch.long)
    return Batch(x0.to(device), keep.to(device), plen, None if cond is None else cond.to(device))


def step_loss(tr: Trainable, batch: Batch, gen: torch.Generator, explicit_prompt: bool, cfg_scale: float):
    """(loss, logits, loss mask) of one training forward."""
    B, L = batch.x0.shape
    draws = objective.draw_forward(gen, B, L, batch.prompt_len if explicit_prompt else None, cfg_scale)
    logits = objective.training_logits(tr.model, batch.x0, batch.keep, draws, batch.cond)
    weight = objective.loss_mask(draws, batch.keep)
    return objective.masked_ce(logits, batch.x0, weight), logits, weight


@torch.no_grad()
def evaluate(
    tr: Trainable,
    items: Sequence[Item],
    *,
    explicit_prompt: bool,
    batch_size: int = 8,
    seed: int = 1234,
    cfg_scale: float = 0.15,
) -> dict[str, float]:
    """Held-out masked-token loss and argmax accuracy, with masks from a fixed seed.

    The same seed gives the same masks for any model, so numbers of two models compare.
    """
    was_training = tr.model.training
    tr.model.eval()
    gen = torch.Generator().manual_seed(seed)
    dev = next(tr.model.parameters()).device
    tot_loss, hits, count = 0.0, 0, 0
    for i in range(0, len(items), batch_size):
        batch = collate(items[i : i + batch_size], dev)
        loss, logits, weight = step_loss(tr, batch, gen, explicit_prompt, cfg_scale)
        h, c = objective.masked_hits(logits, batch.x0, weight)
        tot_loss += float(loss) * c
        hits, count = hits + h, count + c
    tr.model.train(was_training)
    return {"loss": tot_loss / max(count, 1), "accuracy": hits / max(count, 1), "tokens": count}


def _schedule(warmup: int) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def _atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def train(
    tr: Trainable,
    items: Sequence[Item],
    out: Path,
    opts: TrainOptions,
    *,
    explicit_prompt: bool,
    resume: bool = False,
    val_items: Sequence[Item] = (),
    on_save: Callable[[int, History], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> History:
    """Train `tr` on `items` up to `opts.steps`; checkpoints go to `out/train_state.pt`.

    explicit_prompt: use each item's prompt length (fine-tuning); else draw them (pretrain).
    on_save(step, history) runs after each checkpoint (the caller exports model files there).
    """
    if not items:
        raise InputError("no training items")
    out.mkdir(parents=True, exist_ok=True)
    params = tr.named_trainable()
    opt = torch.optim.AdamW([p for _, p in params], lr=opts.lr, weight_decay=opts.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(opts.warmup))
    gen = torch.Generator().manual_seed(opts.seed)
    history, step = History(), 0
    state_path = out / STATE_FILE
    if resume:
        if not state_path.is_file():
            raise InputError(f"{state_path}: no training state to resume from")
        state = torch.load(state_path, weights_only=False)
        names = [n for n, _ in params]
        if list(state["params"]) != names:
            raise InputError(f"{state_path}: trained parameters differ from this model's (other options?)")
        with torch.no_grad():
            for n, p in params:
                p.copy_(state["params"][n])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        step = int(state["step"])
        history = History(**state["history"])
        log.info("resumed from step %d", step)
    dev = next(tr.model.parameters()).device

    def save() -> None:
        _atomic_save(
            {
                "params": {n: p.detach().cpu().clone() for n, p in params},
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "generator": gen.get_state(),
                "step": step,
                "history": asdict(history),
                "options": asdict(opts),
            },
            state_path,
        )
        if on_save is not None:
            on_save(step, history)

    def validate() -> None:
        if val_items:
            res = evaluate(tr, val_items, explicit_prompt=explicit_prompt, cfg_scale=opts.cfg_scale)
            history.val.append({"step": step, **res})
            log.info("step %d: held-out loss %.4f, accuracy %.4f", step, res["loss"], res["accuracy"])

    tr.model.train()
    t0 = time.perf_counter()
    while step < opts.steps:
        idx = torch.randint(0, len(items), (opts.batch_size,), generator=gen).tolist()
        batch = collate([crop(items[i], opts.max_frames, gen) for i in idx], dev)
        loss, _, _ = step_loss(tr, batch, gen, explicit_prompt, opts.cfg_scale)
        if not math.isfinite(loss.detach().item()):
            raise InputError(f"training diverged at step {step + 1} (loss {float(loss)}); lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if opts.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for _, p in params], opts.grad_clip)
        opt.step()
        sched.step()
        step += 1
        history.loss.append(loss.detach().item())
        if on_step is not None:
            on_step(step, history.loss[-1])
        if opts.val_every and step % opts.val_every == 0 and step < opts.steps:
            validate()
        if opts.save_every and step % opts.save_every == 0 and step < opts.steps:
            save()
    validate()
    save()
    log.info("%d steps in %.1fs", len(history.loss), time.perf_counter() - t0)
    return history

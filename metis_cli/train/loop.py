"""The optimisation loop: AdamW, linear warm-up then cosine decay, resumable bit for bit.

Data order: an epoch is one pass over a permutation of the items (seeded by `seed` and the
epoch number) in micro-batches of `batch_size`; every `grad_accum` micro-batches make one
optimizer step (the last step of an epoch may hold fewer). The total number of steps is
`max_steps` when given, else `epochs` x steps per epoch.

Learning rate at step s (0-based) of a run of `total` steps: `lr * (s + 1) / warmup` during
the warm-up, then `lr * 0.5 * (1 + cos(pi * (s - warmup) / (total - warmup)))`. It is a pure
function of (s, total), so no scheduler state is kept; a resumed run with the same total
follows the same curve. Resuming with a larger `max_steps` (or `epochs`) re-plans the curve
for the new total: from the resumed step on, the rate is the one a run planned for the new
total would have had there (so after a finished run it rises again from near zero to that
value, no new warm-up).

Every other random choice (crop offsets, prompt dropout, t, prompt lengths, masks) comes from
one CPU `torch.Generator` seeded with `seed`. A checkpoint (`train_state.pt`) holds the trained
tensors, the optimizer state, that generator's state, the step and the loss history, so on
CPU `N/2 steps + resume + N/2 steps` gives the same weights as `N` steps.

Prompt dropout (CFG, spec §6.3): items with an explicit prompt (tse enrolment, vc reference,
l2s speaker prompt) train, per micro-batch, with one uniform draw `u`: when `u <= cfg_scale` every item of the
micro-batch loses its prompt, so the sequence is the target part only and the finetune
condition is its target part `F[Lp:]`, exactly the input of the unconditional branch at
inference (spec §6.4 step 3; the task condition stays: for l2s the upsampled visual features
without the prompt's zero rows). A micro-batch without any prompt (se) draws nothing. Drawn
prompt lengths (tts, pretrain) have the dropout inside the draw (§6.3).

`OUT/log.jsonl` gets one JSON object per step: step, epoch, loss, lr, grad_norm, and
val_loss / val_accuracy on the steps where the held-out set was evaluated.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from metis_cli.constants import PHONE_PAD_ID
from metis_cli.errors import InputError, UsageError
from metis_cli.options import TrainOptions  # defined with the other user options
from metis_cli.train import objective
from metis_cli.train.data import Item
from metis_cli.train.dist import SINGLE, DistContext
from metis_cli.train.model import Trainable

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
LOG_FILE = "log.jsonl"


SEED_MAX = 2**63 - 1


def check_options(opts: TrainOptions, *, lora_r: int | None = None, lora_alpha: float | None = None) -> None:
    """Raise UsageError naming the option for any value out of range (before anything loads)."""

    def bad(flag: str, rule: str, value: object) -> None:
        raise UsageError(f"{flag}: must be {rule} (got {value})")

    def at_least(flag: str, value: int | None, low: int, optional: bool = False) -> None:
        if value is None and optional:
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            bad(flag, f"an integer >= {low}", value)

    def finite(flag: str, value: float | None, *, positive: bool = False, optional: bool = False) -> None:
        if value is None and optional:
            return
        try:
            v = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            bad(flag, "a number", value)
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            bad(flag, "a finite number > 0" if positive else "a finite number >= 0", value)

    at_least("--epochs", opts.epochs, 1)
    at_least("--max-steps", opts.max_steps, 1, optional=True)
    at_least("--batch-size", opts.batch_size, 1)
    at_least("--grad-accum", opts.grad_accum, 1)
    finite("--lr", opts.lr, positive=True)
    at_least("--warmup", opts.warmup, 0)
    finite("--weight-decay", opts.weight_decay)
    finite("--grad-clip", opts.grad_clip)
    at_least("--max-frames", opts.max_frames, 2)
    if not isinstance(opts.seed, int) or not 0 <= opts.seed <= SEED_MAX:
        bad("--seed", f"an integer in 0..{SEED_MAX} (2**63 - 1)", opts.seed)
    at_least("--save-every", opts.save_every, 0)
    at_least("--val-every", opts.val_every, 0)
    if opts.cfg_scale is not None:
        finite("--cfg-scale", opts.cfg_scale)
        if opts.cfg_scale > 1:
            bad("--cfg-scale", "a probability between 0 and 1", opts.cfg_scale)
    at_least("--stop-after", opts.stop_after, 1, optional=True)
    at_least("--lora-r", lora_r, 1, optional=True)
    finite("--lora-alpha", lora_alpha, positive=True, optional=True)


@dataclass
class History:
    loss: list[float] = field(default_factory=list)  # training loss per step (nats)
    val: list[dict] = field(default_factory=list)  # {"step", "loss", "accuracy", "tokens"}


@dataclass
class Batch:
    x0: torch.Tensor  # (B, L) int64, padded with 0
    keep: torch.Tensor  # (B, L) float32, 1 = real frame
    prompt_len: torch.Tensor  # (B,) int64
    cond: torch.Tensor | None  # (B, L, D) float32 or None
    phones: torch.Tensor | None = None  # (B, P) int64 padded with PHONE_PAD_ID
    phone_keep: torch.Tensor | None = None  # (B, P) float32

    def select(self, rows: torch.Tensor) -> Batch:
        """The batch rows `rows` (int64 indices)."""

        def pick(x):
            return None if x is None else x[rows.to(x.device)]

        return Batch(
            pick(self.x0),
            pick(self.keep),
            self.prompt_len[rows],
            pick(self.cond),
            pick(self.phones),
            pick(self.phone_keep),
        )


def resolve_cfg_scale(tr: Trainable, opts: TrainOptions) -> float:
    """`opts.cfg_scale`, else the model config's `t2s_model.cfg_scale` (0.15 when absent)."""
    value = opts.cfg_scale if opts.cfg_scale is not None else tr.block.get("cfg_scale", 0.15)
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"--cfg-scale: must be a probability between 0 and 1 (got {value:g})")
    return value


def steps_per_epoch(n_items: int, batch_size: int, grad_accum: int) -> int:
    micro = math.ceil(n_items / batch_size)
    return math.ceil(micro / grad_accum)


def total_steps(n_items: int, opts: TrainOptions) -> int:
    if opts.max_steps is not None:
        return int(opts.max_steps)
    return int(opts.epochs) * steps_per_epoch(n_items, opts.batch_size, opts.grad_accum)


def effective_warmup(warmup: int, total: int) -> int:
    """The warm-up length used: `warmup`, but at most a tenth of the run (at least 1 step)."""
    return max(0, min(warmup, max(1, total // 10)))


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Fraction of the peak rate at 0-based optimizer step `step` of `total` (module doc)."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def crop(item: Item, max_frames: int, gen: torch.Generator) -> Item:
    """Keep the prompt and a random window of the rest so that at most `max_frames` remain.

    Items with phones (tts) are never cropped: the phones cover the whole utterance.
    """
    n, p = len(item), item.prompt_len
    if n <= max_frames or item.phones is not None:
        return item
    if max_frames <= p:
        raise UsageError(f"--max-frames {max_frames} leaves no target frame after a {p}-frame prompt")
    width = max_frames - p
    off = p + int(torch.randint(0, n - p - width + 1, (1,), generator=gen))
    idx = torch.cat([torch.arange(p), torch.arange(off, off + width)])
    return Item(item.x0[idx], p, item.cond[idx] if item.cond is not None else None)


def drop_prompts(items: Sequence[Item], gen: torch.Generator, cfg_scale: float) -> tuple[list[Item], bool]:
    """CFG prompt dropout of one micro-batch with explicit prompts (module doc).

    Draws one uniform from `gen` when some item has a prompt; with `u <= cfg_scale` returns
    every item cut to its target part (x0[Lp:], cond[Lp:], prompt length 0) and True.
    Without any prompt nothing is drawn and the items come back unchanged.
    """
    items = list(items)
    if not any(it.prompt_len > 0 for it in items):
        return items, False
    u = torch.rand(1, generator=gen).item()
    if u > cfg_scale:
        return items, False
    cut = [
        Item(
            it.x0[it.prompt_len :],
            0,
            it.cond[it.prompt_len :] if it.cond is not None else None,
            it.phones,
        )
        for it in items
    ]
    return cut, True


def collate(items: Sequence[Item], device: torch.device) -> Batch:
    """Pad items to the longest; keep marks real frames (and real phones)."""
    L = max(len(it) for it in items)
    B = len(items)
    x0 = torch.zeros(B, L, dtype=torch.long)
    keep = torch.zeros(B, L)
    cond = None
    if items[0].cond is not None:
        cond = torch.zeros(B, L, items[0].cond.shape[1])
    phones = phone_keep = None
    if items[0].phones is not None:
        P = max(len(it.phones) for it in items)
        phones = torch.full((B, P), PHONE_PAD_ID, dtype=torch.long)
        phone_keep = torch.zeros(B, P)
    for b, it in enumerate(items):
        x0[b, : len(it)] = it.x0
        keep[b, : len(it)] = 1.0
        if cond is not None:
            cond[b, : len(it)] = it.cond
        if phones is not None:
            phones[b, : len(it.phones)] = it.phones
            phone_keep[b, : len(it.phones)] = 1.0
    plen = torch.tensor([it.prompt_len for it in items], dtype=torch.long)

    def to(x):
        return None if x is None else x.to(device)

    return Batch(x0.to(device), keep.to(device), plen, to(cond), to(phones), to(phone_keep))


def step_loss(tr: Trainable, batch: Batch, gen: torch.Generator, explicit_prompt: bool, cfg_scale: float):
    """(loss, logits, loss mask) of one training forward."""
    B, L = batch.x0.shape
    draws = objective.draw_forward(gen, B, L, batch.prompt_len if explicit_prompt else None, cfg_scale)
    logits = objective.training_logits(
        tr.model, batch.x0, batch.keep, draws, batch.cond, batch.phones, batch.phone_keep
    )
    weight = objective.loss_mask(draws, batch.keep)
    return objective.masked_ce(logits, batch.x0, weight), logits, weight


def shard_loss(
    net: torch.nn.Module,
    batch: Batch,
    gen: torch.Generator,
    explicit_prompt: bool,
    cfg_scale: float,
    ctx: DistContext,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss to back-propagate, this rank's summed CE, global loss-token count) of one micro-batch.

    The draws cover the whole (global) batch, identically on every rank; `net` (an
    `objective.TrainingForward`, DDP-wrapped when distributed) sees only this rank's rows. The
    loss is `world * summed CE / global count`, so DDP's gradient average is the gradient of
    the global token mean (in one process: the plain token mean). A rank without rows runs
    row 0 with weight 0, so that every rank takes part in the gradient reduction.
    """
    B, L = batch.x0.shape
    draws = objective.draw_forward(gen, B, L, batch.prompt_len if explicit_prompt else None, cfg_scale)
    weight = objective.loss_mask(draws, batch.keep)
    count = weight.sum().clamp(min=1.0)
    scale = float(ctx.world)
    if ctx.enabled:
        rows = ctx.rows(B)
        if len(rows) == 0:
            rows, scale = range(1), 0.0
        idx = torch.tensor(list(rows), dtype=torch.long)
        batch, draws = batch.select(idx), objective.select_draws(draws, idx)
        weight = weight[idx.to(weight.device)]
    logits = net(batch.x0, batch.keep, draws.t, draws.mask, batch.cond, batch.phones, batch.phone_keep)
    total = objective.masked_ce_sum(logits, batch.x0, weight)
    if scale == 0.0:
        total = total * 0.0
    return total * scale / count, total.detach(), count


def _autocast(device: torch.device, bf16: bool | None):
    use = device.type == "cuda" if bf16 is None else bf16
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(
    tr: Trainable,
    items: Sequence[Item],
    *,
    explicit_prompt: bool,
    batch_size: int = 8,
    seed: int = 1234,
    cfg_scale: float = 0.15,
    bf16: bool | None = None,
) -> dict[str, float]:
    """Held-out masked-token loss and argmax accuracy, with masks from a fixed seed.

    Explicit prompts are always kept (no prompt dropout): this measures the conditional model.

    The same seed gives the same masks for any model, so numbers of two models compare.
    """
    was_training = tr.model.training
    tr.model.eval()
    gen = torch.Generator().manual_seed(seed)
    dev = next(tr.model.parameters()).device
    tot_loss, hits, count = 0.0, 0, 0
    for i in range(0, len(items), batch_size):
        batch = collate(items[i : i + batch_size], dev)
        with _autocast(dev, bf16):
            loss, logits, weight = step_loss(tr, batch, gen, explicit_prompt, cfg_scale)
        h, c = objective.masked_hits(logits, batch.x0, weight)
        tot_loss += float(loss) * c
        hits, count = hits + h, count + c
    tr.model.train(was_training)
    return {"loss": tot_loss / max(count, 1), "accuracy": hits / max(count, 1), "tokens": count}


def _atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        tmp.replace(path)
    except BaseException:  # a full disk or a second signal: no half-written state left behind
        tmp.unlink(missing_ok=True)
        raise


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines past `step` (written after the checkpoint a resumed run starts from)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(f"{ln}\n" for ln in keep))


class Interrupted(Exception):
    """Training stopped by Ctrl-C after a checkpoint at `step`."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at step {step}")
        self.step = step


class Trainer:
    """One training run with its state: model, optimizer, generator, step and history.

    The learning rate is a pure function of (step, total) (module doc), so there is no
    scheduler object; everything a bit-identical resume needs is in `save()`'s checkpoint.
    explicit_prompt: use each item's prompt length (se/tse/vc); else draw them (tts, pretrain).
    on_save(step, history) runs after each checkpoint (the caller exports model files there).
    on_step(record, total) gets each step's log record. run_info is stored in the checkpoint
    and must match on resume (e.g. the start model).
    dist: the process group of a torchrun launch (`dist.py`): each rank trains its share of every
    micro-batch through DDP; only rank 0 writes files, evaluates and calls on_step / on_save.
    """

    def __init__(
        self,
        tr: Trainable,
        items: Sequence[Item],
        out: Path,
        opts: TrainOptions,
        *,
        explicit_prompt: bool,
        val_items: Sequence[Item] = (),
        on_save: Callable[[int, History], None] | None = None,
        on_step: Callable[[dict, int], None] | None = None,
        run_info: dict | None = None,
        dist: DistContext = SINGLE,
    ):
        if not items:
            raise InputError("no training items")
        check_options(opts)
        self.tr, self.items, self.val_items, self.opts = tr, items, val_items, opts
        self.explicit_prompt, self.dist, self.main = explicit_prompt, dist, dist.is_main
        self.on_save, self.on_step, self.info = on_save, on_step, dict(run_info or {})
        self.per_epoch = steps_per_epoch(len(items), opts.batch_size, opts.grad_accum)
        self.total = total_steps(len(items), opts)
        if self.total < 1:
            raise UsageError("nothing to train: --epochs and --max-steps must be at least 1")
        self.warmup = effective_warmup(opts.warmup, self.total)
        self.cfg_scale = resolve_cfg_scale(tr, opts)
        self.params = tr.named_trainable()
        self.optimizer = torch.optim.AdamW(
            [p for _, p in self.params], lr=opts.lr, weight_decay=opts.weight_decay
        )
        self.generator = torch.Generator().manual_seed(opts.seed)
        self.history, self.done = History(), 0  # done: finished optimizer steps
        self.state_path, self.log_path = out / STATE_FILE, out / LOG_FILE
        self.device = next(tr.model.parameters()).device
        self.net: torch.nn.Module | None = None  # built by run(), after a resume loaded the weights
        if self.main:
            out.mkdir(parents=True, exist_ok=True)

    def resume(self) -> None:
        """Load `train_state.pt`: weights, optimizer, generator, step and history."""
        path, n = self.state_path, len(self.items)
        if not path.is_file():
            raise UsageError(f"{path}: no training state to resume from")
        # our own file, but never run pickles; map_location: a checkpoint saved on a GPU resumes
        # on the CPU, and under torchrun no rank loads another's state onto cuda:0 (parameters
        # and optimizer state move to this rank's device below, the generator stays on the CPU)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if list(state["params"]) != [name for name, _ in self.params]:
            raise UsageError(f"{path}: trained parameters differ from this model's (other options?)")
        for k, v in self.info.items():
            if state.get("info", {}).get(k, v) != v:
                raise UsageError(f"{path}: the run was started with {k} {state['info'][k]!r}, not {v!r}")
        if state.get("items", n) != n:
            log.warning(
                "resuming on %d items (the run started with %d): the data order differs", n, state["items"]
            )
        with torch.no_grad():
            for name, p in self.params:
                p.copy_(state["params"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.done = int(state["step"])
        self.history = History(**state["history"])
        if state.get("total", self.total) != self.total:
            log.info("schedule re-planned for %d steps (was %d)", self.total, state["total"])
        log.info("resumed from step %d of %d", self.done, self.total)
        if self.main:
            _trim_log(self.log_path, self.done)

    def save(self) -> None:
        """Write the checkpoint atomically (rank 0 only), then call on_save."""
        if not self.main:
            return
        state = {
            "params": {name: p.detach().cpu().clone() for name, p in self.params},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.done,
            "total": self.total,
            "items": len(self.items),
            "history": asdict(self.history),
            "options": asdict(self.opts),
            "info": self.info,
        }
        _atomic_save(state, self.state_path)
        if self.on_save is not None:
            self.on_save(self.done, self.history)

    def evaluate(self, record: dict | None) -> None:
        """Held-out evaluation at the current step (once per step, rank 0); adds it to `record`."""
        history = self.history
        if not self.main or not self.val_items or (history.val and history.val[-1]["step"] == self.done):
            return
        res = evaluate(
            self.tr,
            self.val_items,
            explicit_prompt=self.explicit_prompt,
            cfg_scale=self.cfg_scale,
            bf16=self.opts.bf16,
        )
        history.val.append({"step": self.done, **res})
        log.info("step %d: held-out loss %.4f, accuracy %.4f", self.done, res["loss"], res["accuracy"])
        if record is not None:
            record.update(val_loss=res["loss"], val_accuracy=res["accuracy"])

    def step(self) -> dict:
        """One optimizer step over `grad_accum` micro-batches; returns its log record."""
        opts, n = self.opts, len(self.items)
        epoch, k = divmod(self.done, self.per_epoch)
        order = _epoch_order(n, opts.seed, epoch)
        micro = range(k * opts.grad_accum, min((k + 1) * opts.grad_accum, math.ceil(n / opts.batch_size)))
        lr = opts.lr * lr_factor(self.done, self.total, self.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        # (1,) tensors on the device: read back once per optimizer step
        losses = [
            self._micro_step(
                order[j * opts.batch_size : (j + 1) * opts.batch_size], j == micro[-1], len(micro)
            )
            for j in micro
        ]
        values = self._loss_values(losses)
        bad = [v for v in values if not math.isfinite(v)]
        if bad:
            raise InputError(f"training diverged at step {self.done + 1} (loss {bad[0]}); lower --lr")
        max_norm = opts.grad_clip if opts.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_([p for _, p in self.params], max_norm))
        self.optimizer.step()
        loss = sum(values) / len(values)
        return {"step": self.done + 1, "epoch": epoch + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm}

    def _micro_step(self, idx: list[int], last: bool, n_micro: int) -> torch.Tensor:
        """Forward and backward of one micro-batch (item indices `idx`); its loss entry."""
        gen, dist = self.generator, self.dist
        chosen = [crop(self.items[i], self.opts.max_frames, gen) for i in idx]
        if self.explicit_prompt:
            chosen, _ = drop_prompts(chosen, gen, self.cfg_scale)
        batch = collate(chosen, self.device)
        # DDP: reduce the gradients once per optimizer step (after the last micro-batch)
        sync = self.net.no_sync() if dist.enabled and not last else contextlib.nullcontext()
        with sync:
            with _autocast(self.device, self.opts.bf16):
                loss, ce_sum, count = shard_loss(
                    self.net, batch, gen, self.explicit_prompt, self.cfg_scale, dist
                )
            (loss / n_micro).backward()
        # dist: this rank's summed CE and the global token count; else the micro-batch mean
        return torch.stack([ce_sum, count]) if dist.enabled else loss.detach().reshape(1)

    def _loss_values(self, losses: list[torch.Tensor]) -> list[float]:
        """The micro-batch losses of one step: one reduction and one host read, not per micro-batch."""
        if self.dist.enabled:
            sums = self.dist.all_sum(torch.stack(losses)[:, 0])
            return (sums / torch.stack(losses)[:, 1]).tolist()
        return torch.cat(losses).tolist()

    def _build_net(self) -> torch.nn.Module:
        net: torch.nn.Module = objective.TrainingForward(self.tr.model)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            dev = self.device
            net = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
        return net

    def _after_step(self, record: dict, stop: int, logf) -> None:
        """Bookkeeping of a finished step: history, evaluation, log line, callbacks, checkpoint."""
        opts, step = self.opts, self.done
        self.history.loss.append(record["loss"])
        end_of_epoch = step % self.per_epoch == 0
        if end_of_epoch or step == self.total or (opts.val_every and step % opts.val_every == 0):
            self.evaluate(record)
        if logf is not None:
            logf.write(json.dumps(record) + "\n")
            logf.flush()
        if self.on_step is not None and self.main:
            self.on_step(record, self.total)
        if opts.save_every and step % opts.save_every == 0 and step < stop:
            self.save()

    def run(self, *, resume: bool = False) -> History:
        """Train up to `total` steps (or `--stop-after`), then evaluate and save.

        A KeyboardInterrupt saves a checkpoint at the last finished step and raises `Interrupted`.
        """
        if resume:
            self.resume()
        elif self.main and self.log_path.exists():
            self.log_path.unlink()
        self.net = self._build_net()
        stop = self.total if self.opts.stop_after is None else min(self.total, int(self.opts.stop_after))
        self.tr.model.train()
        t0 = time.perf_counter()
        with open(self.log_path, "a", encoding="utf-8") if self.main else contextlib.nullcontext() as logf:
            pending = None  # the generator state before an unfinished step
            try:
                while self.done < stop:
                    pending = self.generator.get_state()
                    record = self.step()
                    self.done += 1
                    pending = None
                    self._after_step(record, stop, logf)
            except KeyboardInterrupt:
                if pending is not None:
                    self.generator.set_state(pending)  # the unfinished step is redone on resume
                self.save()
                raise Interrupted(self.done) from None
        if self.done >= self.total:
            self.evaluate(None)  # a resumed, already finished run: the final evaluation
        self.save()
        log.info("%d steps in %.1fs", self.done, time.perf_counter() - t0)
        return self.history


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
    on_step: Callable[[dict, int], None] | None = None,
    run_info: dict | None = None,
    dist: DistContext = SINGLE,
) -> History:
    """Train `tr` on `items` for `total_steps(len(items), opts)` steps; checkpoints go to `out`.

    `Trainer(...).run(resume=resume)`; see `Trainer` for the arguments.
    """
    trainer = Trainer(
        tr,
        items,
        out,
        opts,
        explicit_prompt=explicit_prompt,
        val_items=val_items,
        on_save=on_save,
        on_step=on_step,
        run_info=run_info,
        dist=dist,
    )
    return trainer.run(resume=resume)

"""``metis finetune`` and ``metis pretrain``: train stage 1, write a drop-in model folder.

Multi-GPU: `torchrun --nproc_per_node=N -m metis_cli.cli finetune ... --device cuda` runs N
processes with DistributedDataParallel (`metis_cli.train.dist`); only rank 0 prints.
"""

from __future__ import annotations

import json
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import typer

from metis_cli.errors import MetisError

_CKPT = typer.Option(
    None,
    "--checkpoint-dir",
    envvar="METIS_CHECKPOINT_DIR",
    help="Local tree <org>/<repo>/<file> of checkpoints (default: the Hugging Face cache).",
)
_OFFLINE = typer.Option(False, "--offline", help="Never download (also HF_HUB_OFFLINE=1).")
_DEVICE = typer.Option("cpu", "--device", help="cpu (bit-exact resume), auto, cuda, cuda:N or mps.")
_CACHE = typer.Option(
    None, "--cache-dir", help="Feature cache folder (default: $METIS_CACHE_DIR/features or ~/.cache/metis)."
)
_OUT = typer.Option(..., "--out", "-o", help="Output model folder (card.json, weights, log.jsonl).")
_EPOCHS = typer.Option(3, "--epochs", help="Passes over the data (ignored with --max-steps).")
_MAX_STEPS = typer.Option(
    None, "--max-steps", help="Total optimizer steps; fixes the schedule (a larger value extends a run)."
)
_BATCH = typer.Option(8, "--batch-size", help="Items per micro-batch.")
_ACCUM = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step.")
_LR = typer.Option(1e-4, "--lr", help="Peak learning rate (AdamW).")
_WARMUP = typer.Option(
    100, "--warmup", help="Linear warm-up steps (at most a tenth of the run), then cosine."
)
_WD = typer.Option(0.0, "--weight-decay", help="AdamW weight decay.")
_CLIP = typer.Option(1.0, "--grad-clip", help="Max gradient norm (0 = off).")
_FRAMES = typer.Option(500, "--max-frames", help="Random crop of longer items, in 50 Hz frames (not tts).")
_SEED = typer.Option(0, "--seed", help="Seeds data order, crops, masks and new LoRA/adapter weights.")
_SAVE = typer.Option(500, "--save-every", help="Checkpoint and export every N steps (0 = at the end only).")
_VALEVERY = typer.Option(
    0, "--val-every", help="Also evaluate --val every N steps (always per epoch, at the end)."
)
_RESUME = typer.Option(False, "--resume", help="Continue the run saved in OUT (bit-identical on CPU).")
_CFG = typer.Option(
    None,
    "--cfg-scale",
    help="Probability that a batch trains without its prompt (CFG dropout; default: the model "
    "config's cfg_scale, 0.15 released). se data has no prompt.",
)
_BF16 = typer.Option(None, "--bf16/--fp32", help="bf16 autocast (default: on for CUDA, off on CPU).")
_STOP = typer.Option(
    None, "--stop-after", help="Stop after this step with a checkpoint (--resume continues, same schedule)."
)
_NAME = typer.Option(None, "--name", help="Model name in card.json (default: the folder name).")
_JSON = typer.Option(False, "--json", help="Print the summary as one JSON object.")
_QUIET = typer.Option(False, "--quiet", "-q", help="No progress or reports on stderr.")


def _options(**kw) -> object:
    from metis_cli.train.loop import TrainOptions

    return TrainOptions(**kw)


def _is_main() -> bool:
    from metis_cli.train.dist import is_main_process

    return is_main_process()


def _report(res, as_json: bool) -> None:
    if not _is_main():
        return
    summary = {
        "out": str(res.out),
        "card": str(res.card),
        "steps": len(res.history.loss),
        "total_steps": res.total_steps,
        "examples": res.examples,
        "skipped": len(res.skipped),
        "first_loss": res.history.loss[0] if res.history.loss else None,
        "last_loss": res.history.loss[-1] if res.history.loss else None,
        "start_held_out": res.start_eval,
        "held_out": res.final_eval,
        "features": {"cached": res.cache_hits, "computed": res.cache_misses},
        "log": str(res.out / "log.jsonl"),
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(
        f"wrote {res.card.parent} ({summary['steps']} of {res.total_steps} steps; "
        f"{res.examples} examples, {len(res.skipped)} skipped)"
    )
    if res.history.loss:
        n = min(20, len(res.history.loss))
        first = sum(res.history.loss[:n]) / n
        last = sum(res.history.loss[-n:]) / n
        typer.echo(f"training loss: {first:.4f} (first {n} steps) -> {last:.4f} (last {n})")
    if res.start_eval:
        typer.echo(
            f"held-out before: loss {res.start_eval['loss']:.4f}, accuracy {res.start_eval['accuracy']:.4f}"
        )
    if res.final_eval:
        typer.echo(
            f"held-out after:  loss {res.final_eval['loss']:.4f}, accuracy {res.final_eval['accuracy']:.4f}"
        )


def _fail(message: str, code: int = 1) -> None:
    """One line `metis: error: ...` on stderr and the exit code (2 usage, 1 run failure)."""
    typer.echo(f"metis: error: {message}", err=True)
    raise typer.Exit(code)


def _check(task: str | None, opts, lora_r: int | None = None, lora_alpha: float | None = None) -> None:
    """Usage errors (exit 2) for bad values before anything loads."""
    from metis_cli.train.loop import check_options
    from metis_cli.train.run import FINETUNE_TASKS

    if task is not None and task not in FINETUNE_TASKS:
        _fail(f"--task: fine-tuning supports {', '.join(FINETUNE_TASKS)}, not '{task}'", 2)
    try:
        check_options(opts, lora_r=lora_r, lora_alpha=lora_alpha)
    except MetisError as exc:
        _fail(str(exc), 2)


@contextmanager
def _signals_save():
    """SIGTERM (what schedulers send before killing) stops training like Ctrl-C: the loop saves
    a checkpoint at the last finished step; the command then exits 128 + signal (143, 130)."""
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        if received:  # a repeated SIGTERM must not interrupt the checkpoint being written
            return
        received.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _progress(label: str, quiet: bool):
    """(on_step, on_skip) callbacks: a rich bar on a terminal's stderr; reports as plain lines."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True, soft_wrap=True)
    bar = Progress(
        TextColumn(f"metis {label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal or not _is_main(),
    )
    task_id = None

    def on_step(record: dict, total: int) -> None:
        nonlocal task_id
        status = f"loss {record['loss']:.4f} lr {record['lr']:.2e}"
        if "val_accuracy" in record:
            status += f" val acc {record['val_accuracy']:.3f}"
        if task_id is None:
            task_id = bar.add_task(label, total=total, completed=record["step"] - 1, status="")
        bar.update(task_id, completed=record["step"], status=status)

    def on_skip(line: str) -> None:
        if not quiet and _is_main():
            print(f"skipped {line}", file=sys.stderr, flush=True)

    with bar:
        yield on_step, on_skip


def _call(fn, **kw):
    from metis_cli.errors import UsageError
    from metis_cli.train.loop import Interrupted

    with _signals_save() as received:
        try:
            return fn(**kw)
        except MetisError as exc:
            _fail(
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                2 if isinstance(exc, UsageError) else 1,
            )
        except Interrupted as exc:
            signum = received[0] if received else signal.SIGINT
            name = signal.Signals(signum).name
            _fail(
                f"{name}: stopped at step {exc.step} (checkpoint saved; continue with --resume)", 128 + signum
            )
        except KeyboardInterrupt:  # before training started: nothing to save
            signum = received[0] if received else signal.SIGINT
            _fail(f"{signal.Signals(signum).name}: stopped before training started", 128 + signum)


def register(app: typer.Typer) -> None:
    @app.command("finetune")
    def finetune_command(
        task: str = typer.Option(..., "--task", "-t", help="se, tse, vc, tts or l2s."),
        data: Path = typer.Option(
            ..., "--data", help="Training manifest: one JSON object per line (README)."
        ),
        out: Path = _OUT,
        val: Path = typer.Option(
            None, "--val", help="Held-out manifest: loss and masked-token accuracy per epoch."
        ),
        base: str = typer.Option(
            None,
            "--base",
            "-m",
            help="Start model: card name or folder (default: the task's released model, else metis-base; "
            "l2s: metis-l2s or an l2s folder).",
        ),
        visual_checkpoint: Path = typer.Option(
            None,
            "--visual-checkpoint",
            envvar="METIS_VISUAL_CHECKPOINT",
            help="l2s (required): Auto-AVSR visual-only model.pth (model.json beside it), as for metis l2s.",
        ),
        full: bool = typer.Option(
            False, "--full", help="Full-scale fine-tuning: train every stage-1 weight."
        ),
        lora_r: int = typer.Option(
            None, "--lora-r", help="Rank of a fresh LoRA (default: se/tse/tts/l2s 32, vc 16)."
        ),
        lora_alpha: float = typer.Option(
            None,
            "--lora-alpha",
            help="Alpha of a fresh LoRA (default: se/tse/tts/l2s 64, vc 32; else 2 x rank).",
        ),
        epochs: int = _EPOCHS,
        max_steps: int = _MAX_STEPS,
        lr: float = _LR,
        batch_size: int = _BATCH,
        grad_accum: int = _ACCUM,
        seed: int = _SEED,
        resume: bool = _RESUME,
        warmup: int = _WARMUP,
        weight_decay: float = _WD,
        grad_clip: float = _CLIP,
        max_frames: int = _FRAMES,
        save_every: int = _SAVE,
        val_every: int = _VALEVERY,
        cfg_scale: float = _CFG,
        bf16: bool = _BF16,
        stop_after: int = _STOP,
        name: str = _NAME,
        cache_dir: Path = _CACHE,
        checkpoint_dir: Path = _CKPT,
        offline: bool = _OFFLINE,
        device: str = _DEVICE,
        as_json: bool = _JSON,
        quiet: bool = _QUIET,
    ) -> None:
        """Fine-tune stage 1 (LoRA + adapter, or --full) on a JSON-lines manifest."""
        from metis_cli.train import finetune

        opts = _options(
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            grad_accum=grad_accum,
            lr=lr,
            warmup=warmup,
            weight_decay=weight_decay,
            grad_clip=grad_clip,
            max_frames=max_frames,
            seed=seed,
            save_every=save_every,
            val_every=val_every,
            cfg_scale=cfg_scale,
            bf16=bf16,
            stop_after=stop_after,
        )
        _check(task, opts, lora_r, lora_alpha)
        with _progress(f"finetune {task}", quiet) as (on_step, on_skip):
            res = _call(
                finetune,
                task=task,
                data=data,
                out=out,
                base=base,
                val=val,
                full=full,
                lora_r=lora_r,
                lora_alpha=lora_alpha,
                options=opts,
                resume=resume,
                name=name,
                cache_dir=cache_dir,
                checkpoint_dir=checkpoint_dir,
                offline=offline or None,
                device=device,
                visual_checkpoint=visual_checkpoint,
                on_step=on_step,
                on_skip=on_skip,
            )
        _report(res, as_json)

    @app.command("pretrain")
    def pretrain_command(
        data: Path = typer.Option(
            ..., "--data", help="Text file of audio paths (one a line) or a folder of audio files."
        ),
        out: Path = _OUT,
        base: str = typer.Option("metis-base", "--base", "-m", help="Base model to continue from."),
        config: Path = typer.Option(
            None, "--config", help="Start from random weights: JSON with a t2s_model block (--base ignored)."
        ),
        val: Path = typer.Option(None, "--val", help="Held-out audio list: loss and masked-token accuracy."),
        epochs: int = _EPOCHS,
        max_steps: int = _MAX_STEPS,
        lr: float = _LR,
        batch_size: int = _BATCH,
        grad_accum: int = _ACCUM,
        seed: int = _SEED,
        resume: bool = _RESUME,
        warmup: int = _WARMUP,
        weight_decay: float = _WD,
        grad_clip: float = _CLIP,
        max_frames: int = _FRAMES,
        save_every: int = _SAVE,
        val_every: int = _VALEVERY,
        cfg_scale: float = typer.Option(
            None,
            "--cfg-scale",
            help="Probability of a batch without prompt (default: the config's cfg_scale, 0.15 released).",
        ),
        bf16: bool = _BF16,
        stop_after: int = _STOP,
        name: str = _NAME,
        cache_dir: Path = _CACHE,
        checkpoint_dir: Path = _CKPT,
        offline: bool = _OFFLINE,
        device: str = _DEVICE,
        as_json: bool = _JSON,
        quiet: bool = _QUIET,
    ) -> None:
        """Masked generative pre-training of a base stage-1 model on unlabeled speech."""
        from metis_cli.train import pretrain

        opts = _options(
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            grad_accum=grad_accum,
            lr=lr,
            warmup=warmup,
            weight_decay=weight_decay,
            grad_clip=grad_clip,
            max_frames=max_frames,
            seed=seed,
            save_every=save_every,
            val_every=val_every,
            cfg_scale=cfg_scale,
            bf16=bf16,
            stop_after=stop_after,
        )
        _check(None, opts)
        with _progress("pretrain", quiet) as (on_step, _):
            res = _call(
                pretrain,
                data=data,
                out=out,
                base=base,
                config=config,
                val=val,
                options=opts,
                resume=resume,
                name=name,
                cache_dir=cache_dir,
                checkpoint_dir=checkpoint_dir,
                offline=offline or None,
                device=device,
                on_step=on_step,
            )
        _report(res, as_json)

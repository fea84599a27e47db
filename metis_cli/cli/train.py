"""``metis finetune`` and ``metis pretrain``: train stage 1, write a drop-in model folder."""

from __future__ import annotations

import json
import sys
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
_VAL = typer.Option(
    None, "--val", help="Held-out data (same format as DATA): loss and masked-token accuracy."
)
_STEPS = typer.Option(1000, "--steps", help="Total optimizer steps (a resumed run continues up to this).")
_BATCH = typer.Option(8, "--batch-size", help="Items per step.")
_LR = typer.Option(1e-4, "--lr", help="Peak learning rate (AdamW).")
_WARMUP = typer.Option(100, "--warmup", help="Linear warm-up steps, then a constant rate.")
_WD = typer.Option(0.0, "--weight-decay", help="AdamW weight decay.")
_CLIP = typer.Option(1.0, "--grad-clip", help="Max gradient norm (0 = off).")
_FRAMES = typer.Option(500, "--max-frames", help="Random crop of longer items, in 50 Hz frames.")
_SEED = typer.Option(0, "--seed", help="Seeds batches, crops, masks and new LoRA/adapter weights.")
_SAVE = typer.Option(500, "--save-every", help="Checkpoint and export every N steps (0 = at the end only).")
_VALEVERY = typer.Option(0, "--val-every", help="Evaluate --val every N steps (0 = at the end only).")
_RESUME = typer.Option(False, "--resume", help="Continue the run saved in OUT (bit-identical on CPU).")
_NAME = typer.Option(None, "--name", help="Model name in card.json (default: the folder name).")
_JSON = typer.Option(False, "--json", help="Print the summary as one JSON object.")


def _options(**kw) -> object:
    from metis_cli.train.loop import TrainOptions

    return TrainOptions(**kw)


def _report(res, as_json: bool) -> None:
    summary = {
        "out": str(res.out),
        "card": str(res.card),
        "steps": len(res.history.loss),
        "first_loss": res.history.loss[0] if res.history.loss else None,
        "last_loss": res.history.loss[-1] if res.history.loss else None,
        "start_held_out": res.start_eval,
        "held_out": res.final_eval,
        "features": {"cached": res.cache_hits, "computed": res.cache_misses},
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(f"wrote {res.card.parent} ({summary['steps']} steps in total)")
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


def _fail(exc: MetisError) -> None:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _progress(total: int):
    def on_step(step: int, loss: float) -> None:
        if step % 50 == 0 or step == total:
            print(f"step {step}/{total}: loss {loss:.4f}", file=sys.stderr, flush=True)

    return on_step


def register(app: typer.Typer) -> None:
    @app.command("finetune")
    def finetune_command(
        task: str = typer.Argument(..., help="se, tse or vc."),
        data: Path = typer.Argument(
            ..., help="Folder with input/ (noisy/), target/ (clean/) [, prompt/] or a JSON-lines manifest."
        ),
        out: Path = typer.Argument(..., help="Output model folder (card.json + weights)."),
        model: str = typer.Option(
            None,
            "--model",
            "-m",
            help="Start model: card name or folder (default: the task's official model).",
        ),
        full: bool = typer.Option(
            False, "--full", help="Train every stage-1 weight; write stage1.safetensors."
        ),
        rank: int = typer.Option(
            None, "--rank", help="LoRA rank of a fresh LoRA (from a base model; default 32)."
        ),
        alpha: float = typer.Option(None, "--alpha", help="LoRA alpha of a fresh LoRA (default 2 x rank)."),
        val: Path = _VAL,
        steps: int = _STEPS,
        batch_size: int = _BATCH,
        lr: float = _LR,
        warmup: int = _WARMUP,
        weight_decay: float = _WD,
        grad_clip: float = _CLIP,
        max_frames: int = _FRAMES,
        seed: int = _SEED,
        save_every: int = _SAVE,
        val_every: int = _VALEVERY,
        resume: bool = _RESUME,
        name: str = _NAME,
        cache_dir: Path = _CACHE,
        checkpoint_dir: Path = _CKPT,
        offline: bool = _OFFLINE,
        device: str = _DEVICE,
        as_json: bool = _JSON,
    ) -> None:
        """Fine-tune stage 1 for SE, TSE or VC (LoRA + gated adapter, or --full)."""
        from metis_cli.train import finetune

        opts = _options(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            warmup=warmup,
            weight_decay=weight_decay,
            grad_clip=grad_clip,
            max_frames=max_frames,
            seed=seed,
            save_every=save_every,
            val_every=val_every,
        )
        try:
            res = finetune(
                task,
                data,
                out,
                model=model,
                val=val,
                full=full,
                rank=rank,
                alpha=alpha,
                options=opts,
                resume=resume,
                name=name,
                cache_dir=cache_dir,
                checkpoint_dir=checkpoint_dir,
                offline=offline or None,
                device=device,
                on_step=_progress(steps),
            )
        except MetisError as exc:
            _fail(exc)
        _report(res, as_json)

    @app.command("pretrain")
    def pretrain_command(
        data: Path = typer.Argument(..., help="Folder of audio files (recursive) or a text file of paths."),
        out: Path = typer.Argument(..., help="Output base-model folder (card.json + model.safetensors)."),
        model: str = typer.Option("metis-base", "--model", "-m", help="Base model to continue from."),
        val: Path = _VAL,
        steps: int = _STEPS,
        batch_size: int = _BATCH,
        lr: float = _LR,
        warmup: int = _WARMUP,
        weight_decay: float = _WD,
        grad_clip: float = _CLIP,
        max_frames: int = _FRAMES,
        seed: int = _SEED,
        save_every: int = _SAVE,
        val_every: int = _VALEVERY,
        cfg_scale: float = typer.Option(0.15, "--cfg-scale", help="Probability of a batch without prompt."),
        resume: bool = _RESUME,
        name: str = _NAME,
        cache_dir: Path = _CACHE,
        checkpoint_dir: Path = _CKPT,
        offline: bool = _OFFLINE,
        device: str = _DEVICE,
        as_json: bool = _JSON,
    ) -> None:
        """Continue masked generative pre-training of a base stage-1 model on plain speech."""
        from metis_cli.train import pretrain

        opts = _options(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            warmup=warmup,
            weight_decay=weight_decay,
            grad_clip=grad_clip,
            max_frames=max_frames,
            seed=seed,
            save_every=save_every,
            val_every=val_every,
            cfg_scale=cfg_scale,
        )
        try:
            res = pretrain(
                data,
                out,
                model=model,
                val=val,
                options=opts,
                resume=resume,
                name=name,
                cache_dir=cache_dir,
                checkpoint_dir=checkpoint_dir,
                offline=offline or None,
                device=device,
                on_step=_progress(steps),
            )
        except MetisError as exc:
            _fail(exc)
        _report(res, as_json)

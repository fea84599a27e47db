"""``metis finetune`` and ``metis pretrain``: train stage 1, write a drop-in model folder.

Multi-GPU: `torchrun --nproc_per_node=N -m metis_cli.cli finetune ... --device cuda` runs N
processes with DistributedDataParallel (`metis_cli.train.dist`); only rank 0 prints.
"""

from __future__ import annotations

import json
import signal
import sys
from contextlib import contextmanager

import typer

from metis_cli.cli.params import command, group_params
from metis_cli.errors import MetisError


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
    """SIGTERM (what schedulers send before killing), SIGHUP (a closed terminal) and SIGQUIT stop
    training like Ctrl-C: the loop saves a checkpoint at the last finished step; the command then
    exits 128 + signal (143, 129, 131, 130)."""
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        if received:  # a repeated SIGTERM must not interrupt the checkpoint being written
            return
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    try:
        yield received
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


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


def _shared() -> list:
    """The options finetune and pretrain share, generated from `metis_cli.options`."""
    from metis_cli import options

    return [
        *group_params([options.TrainRun, options.TrainOptions]),
        *group_params([options.ModelOptions], only=("checkpoint_dir", "offline")),
        *group_params(
            [options.EngineOptions],
            only=("device",),
            override={
                "device": {"default": "cpu", "help": "cpu (bit-exact resume), auto, cuda, cuda:N or mps."}
            },
        ),
        *group_params(
            [options.ReportOptions],
            only=("json", "quiet"),
            override={
                "json": {"help": "Print the summary as one JSON object."},
                "quiet": {"help": "No progress or reports on stderr."},
            },
        ),
    ]


def _train_options(values: dict) -> object:
    from metis_cli import options

    return _options(**{k: values[k] for k in options.names(options.TrainOptions)})


def _run_kw(values: dict, opts: object) -> dict:
    """The keywords finetune and pretrain share."""
    shared = ("data", "out", "base", "val", "resume", "name", "cache_dir", "checkpoint_dir", "device")
    return {**{k: values[k] for k in shared}, "options": opts, "offline": values["offline"] or None}


def _finetune(values: dict) -> None:
    from metis_cli.train import finetune

    opts = _train_options(values)
    task = values["task"]
    _check(task, opts, values["lora_r"], values["lora_alpha"])
    with _progress(f"finetune {task}", values["quiet"]) as (on_step, on_skip):
        res = _call(
            finetune,
            task=task,
            **_run_kw(values, opts),
            **{k: values[k] for k in ("full", "lora_r", "lora_alpha", "visual_checkpoint")},
            on_step=on_step,
            on_skip=on_skip,
        )
    _report(res, values["json"])


def _pretrain(values: dict) -> None:
    from metis_cli.train import pretrain

    opts = _train_options(values)
    _check(None, opts)
    with _progress("pretrain", values["quiet"]) as (on_step, _):
        res = _call(pretrain, **_run_kw(values, opts), config=values["config"], on_step=on_step)
    _report(res, values["json"])


def register(app: typer.Typer) -> None:
    from metis_cli import options

    visual = group_params(
        [options.EngineOptions],
        only=("visual_checkpoint",),
        override={
            "visual_checkpoint": {
                "help": "l2s (required): Auto-AVSR visual-only model.pth (model.json beside it), "
                "as for metis l2s."
            }
        },
    )
    finetune = [*group_params([options.FinetuneInputs]), *visual, *_shared()]
    app.command("finetune")(
        command(
            _finetune, finetune, "Fine-tune stage 1 (LoRA + adapter, or --full) on a JSON-lines manifest."
        )
    )
    pretrain = [*group_params([options.PretrainInputs]), *_shared()]
    app.command("pretrain")(
        command(
            _pretrain, pretrain, "Masked generative pre-training of a base stage-1 model on unlabeled speech."
        )
    )

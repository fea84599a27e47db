"""Typer parameters generated from the option dataclasses of `metis_cli.options`.

A command is a plain function `body(values: dict)`; `command(body, params, doc)` gives it the
signature Typer reads, built from `inspect.Parameter`s: the options of the groups a command
shows (`group_params`) plus the command's own arguments. No option list is written per command.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, fields
from typing import Any

import typer


def _plain(tp: Any) -> tuple[Any, bool]:
    """(the type Typer should see, whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def group_params(
    groups: Iterable[type],
    task: str | None = None,
    only: Iterable[str] | None = None,
    override: dict[str, dict[str, Any]] | None = None,
) -> list[inspect.Parameter]:
    """One keyword parameter per option field that has a flag (and is shown for `task`).

    only: just these fields (a command that shares a few options of a group); override:
    {field: {"default": ..., "help": ...}} for a command whose default differs (training's
    `--device cpu`)."""
    out: list[inspect.Parameter] = []
    only = None if only is None else set(only)
    override = override or {}
    for cls in groups:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            meta = {**f.metadata, **override.get(f.name, {})}
            if not meta.get("flag"):
                continue
            if only is not None:
                if f.name not in only:
                    continue
            elif task is not None and task not in meta.get("tasks", (task,)):
                continue
            tp, nullable = _plain(hints[f.name])
            default = meta.get("default", f.default)
            if default is MISSING:  # a required option
                default = ...
            if tp is bool and "/" in meta["flag"]:  # --on/--off pair: None = not given
                annotation: Any = bool | None
            elif tp is bool:
                default = bool(default)  # `--offline` off means "honour HF_HUB_OFFLINE" (None)
                annotation = bool
            else:
                annotation = tp | None if nullable else tp
            decls = [meta["flag"]] + ([meta["short"]] if meta.get("short") else [])
            opt = typer.Option(
                default, *decls, help=meta["help"], envvar=meta.get("envvar"), show_default=tp is not bool
            )
            out.append(
                inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=annotation)
            )
    return out


def param(name: str, annotation: Any, info: Any) -> inspect.Parameter:
    """A command's own argument/option (`info`: a typer.Argument(...) or typer.Option(...))."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def command(body: Callable[[dict[str, Any]], None], params: list[inspect.Parameter], doc: str) -> Callable:
    """A function with `params` as its signature that calls `body(values)`."""
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate parameters: {sorted(n for n in names if names.count(n) > 1)}")

    def run(**values: Any) -> None:
        from metis_cli.cli.report import fail_usage
        from metis_cli.errors import UsageError

        try:
            body(values)
        except UsageError as exc:
            fail_usage(str(exc))

    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__doc__ = doc
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run

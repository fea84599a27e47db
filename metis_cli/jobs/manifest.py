"""Manifests: JSONL (one object per line) or CSV (a header row), one row per job.

A bad line becomes a row with `problem` set (reported as `FILE:LINE: ...`), so one bad line
fails only its own job; `parse_row` type-checks a row's fields for a task.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metis_cli.core.tasks import TASKS
from metis_cli.errors import InputError, UsageError

# manifest fields besides the task's input roles (also `make_job`'s per-job fields)
TEXT_FIELDS = ("text", "prompt_text", "language", "prompt_language", "duration")
JOB_FIELDS = TEXT_FIELDS
COMMON_FIELDS = ("output", "seed", "id")


@dataclass
class ManifestRow:
    origin: str  # "FILE:LINE"
    index: int  # 0-based among the manifest's jobs
    fields: dict[str, Any] | None  # None when the line could not be parsed
    problem: str | None = None


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """JSONL (one object per line) or CSV (a header row): one row per job. An unreadable or
    empty manifest is a UsageError; a bad line becomes a row with `problem` set."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: manifest not found") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: manifest is a folder, not a file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read manifest ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: manifest is not UTF-8 text (byte {exc.start})") from None
    rows: list[ManifestRow] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise UsageError(f"{path}: no jobs (empty CSV)")
        for rec in reader:
            line = reader.line_num
            origin = f"{path}:{line}"
            if None in rec:  # more cells than header columns
                rows.append(ManifestRow(origin, len(rows), None, f"{origin}: more cells than columns"))
                continue
            fields = {k.strip(): v for k, v in rec.items() if k is not None and v not in (None, "")}
            rows.append(ManifestRow(origin, len(rows), fields))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            origin = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append(ManifestRow(origin, len(rows), None, f"{origin}: not valid JSON ({exc.msg})"))
                continue
            if not isinstance(obj, dict):
                rows.append(
                    ManifestRow(origin, len(rows), None, f"{origin}: each line must be a JSON object")
                )
                continue
            rows.append(ManifestRow(origin, len(rows), {k: v for k, v in obj.items() if v is not None}))
    if not rows:
        raise UsageError(f"{path}: no jobs")
    return rows


def manifest_fields(task: str) -> tuple[str, ...]:
    spec = TASKS[task]
    extra = TEXT_FIELDS if spec.needs_text else ()
    return spec.inputs + spec.optional_inputs + extra + COMMON_FIELDS


def _str_field(origin: str, name: str, v: Any) -> str:
    if not isinstance(v, str):
        raise InputError(f"{origin}: field '{name}' must be a string (got {type(v).__name__} {v!r})")
    if not v.strip() and name not in ("text", "prompt_text"):
        raise InputError(f"{origin}: field '{name}' is empty")
    return v


def _number_field(origin: str, name: str, v: Any, kind: type) -> Any:
    """An int (kind=int) or float field; CSV cells arrive as strings."""
    what = "an integer" if kind is int else "a number"
    if isinstance(v, str):
        try:
            v = kind(v.strip())
        except ValueError:
            raise InputError(f"{origin}: field '{name}' must be {what} (got {v!r})") from None
    allowed = (int,) if kind is int else (int, float)
    if isinstance(v, bool) or not isinstance(v, allowed):
        raise InputError(f"{origin}: field '{name}' must be {what} (got {type(v).__name__} {v!r})")
    return kind(v)


def parse_row(task: str, row: ManifestRow) -> dict[str, Any]:
    """A manifest row's fields, type-checked: {role: Path, output: Path, seed: int, ...}."""
    assert row.fields is not None
    origin, spec = row.origin, TASKS[task]
    known = manifest_fields(task)
    unknown = [k for k in row.fields if k not in known]
    if unknown:
        raise InputError(
            f"{origin}: unknown field(s) {', '.join(map(repr, unknown))} for {task}"
            f" (known: {', '.join(known)})"
        )
    missing = [r for r in spec.inputs if r not in row.fields]
    if spec.needs_text:
        missing += [k for k in ("text", "prompt_text") if k not in row.fields]
    if missing:
        raise InputError(f"{origin}: missing field(s) {', '.join(missing)}")
    out: dict[str, Any] = {"inputs": {}}
    for k, v in row.fields.items():
        if k in spec.inputs or k in spec.optional_inputs:
            out["inputs"][k] = Path(_str_field(origin, k, v))
        elif k == "output":
            out["output"] = Path(_str_field(origin, k, v))
        elif k == "seed":
            out["seed"] = _number_field(origin, k, v, int)
        elif k == "duration":
            out["duration"] = _number_field(origin, k, v, float)
        elif k == "id":
            out["id"] = str(v)
        else:
            out[k] = _str_field(origin, k, v)
    return out

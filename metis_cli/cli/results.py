"""`metis results FILE...`: merge the results ledgers of a (sharded) run and say what is missing.

A FILE is a ledger given to `--results` (its shard files FILE.shard-*-of-*.jsonl are found next
to it) or one shard file. Only the jobs the latest attempt planned count (records of manifest
rows edited away since do not). stdout: the totals, then one line per failed job (in manifest
order) and per missing job: "started, never finished" (in flight when its process stopped),
"not started", or counted per shard that wrote no ledger (with --json: one JSON object). Exit
codes: 0 every planned job finished ok or skipped; 1 some failed or are missing; 2 no ledger, a
file that is not a ledger (empty, a manifest), or ledgers of two different runs.
"""

from __future__ import annotations

from pathlib import Path

import typer

from metis_cli.cli.report import EXIT_FAILED, EXIT_OK, EXIT_USAGE, error_line, json_line
from metis_cli.errors import printable

MAX_LISTED = 50  # failures/missing jobs listed one per line (the rest counted); --json lists all


def results(
    files: list[Path] = typer.Argument(..., help="Results ledgers (--results FILE) or shard files."),
    as_json: bool = typer.Option(False, "--json", help="Print the merged summary as one JSON object."),
    show_all: bool = typer.Option(
        False, "--all", help=f"List every failed and missing job (default: the first {MAX_LISTED})."
    ),
) -> None:
    """Merge the results ledgers of a run: totals, failures and missing jobs (exit 1 if any)."""
    from metis_cli.errors import UsageError
    from metis_cli.runs.ledger import summarize

    try:
        summary = summarize(files)
    except UsageError as exc:
        error_line(str(exc))
        raise typer.Exit(EXIT_USAGE) from None
    d = summary.to_dict()
    if as_json:
        typer.echo(json_line(d))  # names that are not UTF-8 as \xNN, as the task commands print them
    else:
        for line in _lines(d, None if show_all else MAX_LISTED):
            typer.echo(printable(line))
    raise typer.Exit(EXIT_OK if summary.complete else EXIT_FAILED)


def _lines(d: dict, limit: int | None) -> list[str]:
    shards = f" in {d['shards']} shard(s)" if d["shards"] and d["shards"] > 1 else ""
    total = d["total"] if d["total"] is not None else "?"
    out = [
        f"{total} job(s) planned{shards}; {len(d['files'])} ledger file(s)",
        f"ok {d['ok']}, skipped {d['skipped']}, failed {d['failed']}, missing {d['missing']}",
    ]

    def listed(title: str, rows: list[str], count: int) -> None:
        if not rows:
            return
        out.append(f"{title} ({count} job(s)):")
        shown = rows if limit is None else rows[:limit]
        out.extend(f"  {r}" for r in shown)
        if len(shown) < len(rows):
            out.append(f"  ... and {len(rows) - len(shown)} more (--all or --json lists them)")

    failed = [f.get("error") or f.get("origin") or f.get("output", "?") for f in d["failures"]]
    listed("failed", failed, d["failed"])
    missing = [
        f"{p.get('origin') or p.get('output')}: started, never finished"
        + (f" (shard {p['shard']})" if p.get("shard") else "")
        for p in d["pending"]
    ]
    missing += [f"{name}: not started" for name in d["not_started"]]
    unknown = d["unrecorded"] - len(d["not_started"])
    if unknown > 0:
        where = f" (no ledger from shard(s) {', '.join(d['absent_shards'])})" if d["absent_shards"] else ""
        missing.append(f"{unknown} job(s) never recorded{where}")
    listed("missing", missing, d["missing"])
    if d["complete"]:
        out.append("complete: every planned job finished")
    return out


def register(app: typer.Typer) -> None:
    app.command("results")(results)

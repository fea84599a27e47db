"""The results ledger: one JSON record per job, on disk as soon as the job finishes; resuming from it.

`--results FILE.jsonl` appends, per job, the record `--json` prints (inputs, output, seed,
status, error, timings...) plus `key` (the job's identity), `shard` and `time`; each line is
written, flushed and fsync'd when its job finishes, so a process killed at any moment loses at
most the jobs it had in flight. A sharded run writes one file per shard,
`FILE.shard-00003-of-00008.jsonl`, so no two processes ever append to one file.

Besides job records a ledger holds, per run, a header (`{"ledger": "metis-results", "total":
planned items before sharding, "shard": "3/8", ...}`), one `pending` record per job the run is
about to start, and a closing `summary`. Readers skip what they cannot parse (the torn last
line of a killed process).

Job identity (`key`): the job's manifest line as planned (`jobs.jsonl:3`; none for jobs named
on the command line) and its output path as planned, so the same command, rerun from the same
folder, finds its jobs again whatever the sharding.

Resume (`--resume`; `resume`): the latest record of each job decides, read from every ledger of
the run (every shard file, whatever N was):
* ok or skipped, and the output is there and complete (soundfile reads its header and its
  length is the recorded `output_seconds`): done, not run again;
* ok but the output is gone or incomplete, or pending (it was in flight when the process died):
  run again, replacing an output the run itself wrote;
* error: run again (`--retry-failed`, the default) or not (`--no-retry-failed`: it stays a
  failure and the exit code is 1);
* no record: planned as usual.
Temporary files (`.metis-*.tmp`) that a killed process left beside the outputs are removed when
no process on this machine has them open and they are older than `METIS_STALE_TEMP_SECONDS`
(default 600 s: a writer on another machine may be between two blocks of a long job).

`summarize(paths)` merges ledgers for `metis results`: totals, failures, and missing jobs
(pending ones, and jobs of shards that wrote no ledger).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metis_cli import jobs as J
from metis_cli.constants import CODEC_SAMPLE_RATE
from metis_cli.errors import UsageError
from metis_cli.runs.shard import Shard

LEDGER_TAG = "metis-results"
LEDGER_VERSION = 1
FINISHED = ("ok", "error", "skipped")
SHARD_RE = re.compile(r"\.shard-(\d{5,})-of-(\d{5,})$")
STALE_TEMP_ENV = "METIS_STALE_TEMP_SECONDS"
STALE_TEMP_SECONDS = 600.0
LOSSY = (".ogg", ".oga", ".opus", ".mp3")  # formats whose frame count soundfile may only estimate


# ---- identity and file names ----------------------------------------------------------------------------


def key_of(origin: str | None, output: str | os.PathLike | None) -> str:
    """A job's identity: manifest line and output path, as planned."""
    return f"{origin or ''}|{'' if output is None else str(output)}"


def item_key(item: J.Job | J.Rejected) -> str:
    """The identity of a planned item (the same as its report's, `report_key`)."""
    if isinstance(item, J.Job):
        return key_of(item.origin, item.output)
    if item.job is not None:
        return key_of(item.job.origin, item.job.output)
    return key_of(item.origin, item.output or "")


def report_key(report: Any) -> str:
    return key_of(report.origin, report.output)


def ledger_path(results: str | os.PathLike, shard: Shard | None) -> Path:
    """FILE.jsonl, or FILE.shard-00003-of-00008.jsonl for shard 3/8."""
    path = Path(results)
    if shard is None:
        return path
    suffix = path.suffix or ".jsonl"
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return path.with_name(f"{stem}.{shard.suffix}{suffix}")


def run_ledgers(results: str | os.PathLike) -> list[Path]:
    """Every ledger of a run: FILE itself and each FILE.shard-*-of-*.<ext>, sorted."""
    path = Path(results)
    suffix = path.suffix or ".jsonl"
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    folder = path.parent if str(path.parent) else Path(".")
    found = [path] if path.is_file() else []
    if folder.is_dir():
        pattern = re.compile(re.escape(stem) + r"\.shard-\d{5,}-of-\d{5,}" + re.escape(suffix) + "$")
        found += sorted(p for p in folder.iterdir() if pattern.match(p.name) and p.is_file())
    return found


# ---- reading ----------------------------------------------------------------------------------------------


def read_ledger(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The records of one ledger, in file order; unparsable lines (a torn last line) skipped."""
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the results ledger ({exc.strerror or exc})") from None
    with f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                yield rec


def latest(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The latest job record per key (by `time`, then reading order); pending records count."""
    out: dict[str, dict[str, Any]] = {}
    rank: dict[str, tuple[float, int]] = {}
    for n, rec in enumerate(records):
        key = rec.get("key")
        if not isinstance(key, str) or rec.get("status") not in (*FINISHED, "pending"):
            continue
        t = rec.get("time")
        r = (float(t) if isinstance(t, (int, float)) else 0.0, n)
        if key not in rank or r >= rank[key]:
            out[key], rank[key] = rec, r
    return out


def output_complete(record: Mapping[str, Any], path: str | os.PathLike | None = None) -> str | None:
    """None when the recorded output is there and complete, else why not (one line)."""
    out = path if path is not None else record.get("output")
    if not out or str(out) == "-":
        return "no output file"
    p = Path(out)
    if not p.is_file():
        return f"{p}: output missing"
    if record.get("status") == "skipped":
        return None  # an output that was there before: nothing recorded to compare with
    import soundfile as sf

    try:
        info = sf.info(str(p))
    except Exception:
        return f"{p}: output unreadable"
    if info.samplerate != CODEC_SAMPLE_RATE:
        return f"{p}: output is {info.samplerate} Hz, not {CODEC_SAMPLE_RATE}"
    seconds = record.get("output_seconds")
    if isinstance(seconds, (int, float)):
        sr = info.samplerate
        tol = 0.05 * seconds * sr + 0.1 * sr if p.suffix.lower() in LOSSY else 0.0005 * sr + 1
        if abs(info.frames - seconds * sr) > tol:
            return f"{p}: output has {info.frames / sr:.3f} s, the ledger records {seconds} s"
    return None


# ---- writing ----------------------------------------------------------------------------------------------


class Ledger:
    """An append-only JSONL file: each record written, flushed and fsync'd."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._f: Any = None

    def open(self) -> Ledger:
        try:
            if str(self.path.parent):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            torn = self.path.is_file() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
            self._f = open(self.path, "a", encoding="utf-8")
            if torn:  # a killed writer's last line: start the next record on its own line
                self._f.write("\n")
        except OSError as exc:
            why = exc.strerror or exc
            raise UsageError(f"{self.path}: cannot write the results ledger ({why})") from None
        return self

    def append(self, record: Mapping[str, Any], sync: bool = True) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._f.flush()
        if sync:
            os.fsync(self._f.fileno())

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> Ledger:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def header(task: str, shard: Shard | None, total: int, items: int, resumed: bool) -> dict[str, Any]:
    return {
        "ledger": LEDGER_TAG,
        "version": LEDGER_VERSION,
        "task": task,
        "shard": None if shard is None else str(shard),
        "total": total,
        "items": items,
        "resumed": resumed,
        "time": time.time(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def job_record(report: Mapping[str, Any], key: str, shard: Shard | None) -> dict[str, Any]:
    """A finished job's ledger record: its `--json` report plus key, shard and time."""
    return {**report, "key": key, "shard": None if shard is None else str(shard), "time": time.time()}


def pending_record(item: J.Job, shard: Shard | None) -> dict[str, Any]:
    return {
        "key": item_key(item),
        "status": "pending",
        "origin": item.origin,
        "output": str(item.output),
        "shard": None if shard is None else str(shard),
        "time": time.time(),
    }


# ---- resuming ---------------------------------------------------------------------------------------------


@dataclass
class Resumed:
    plan: J.Plan  # what is left to run
    done: int = 0  # finished before: not run again
    rerun: list[str] = field(default_factory=list)  # ok/pending before but must run again: why
    not_retried: list[dict[str, Any]] = field(default_factory=list)  # failed before, not retried


def resume(plan: J.Plan, records: Mapping[str, Mapping[str, Any]], retry_failed: bool = True) -> Resumed:
    """Drop the plan's finished jobs (module docstring); `records`: `latest(...)` of the ledgers."""
    out = Resumed(J.Plan(plan.task, [], list(plan.warnings)))
    for item in plan.items:
        rec = records.get(item_key(item))
        if rec is None:
            out.plan.items.append(item)
            continue
        job = item if isinstance(item, J.Job) else item.job
        status = rec.get("status")
        if status in ("ok", "skipped"):
            why = output_complete(rec, None if job is None else job.output)
            if why is None:
                out.done += 1
                continue
            out.rerun.append(why)
            out.plan.items.append(_runnable(item))
        elif status == "pending":
            out.plan.items.append(_runnable(item))
        elif retry_failed:
            out.plan.items.append(item)  # as planned: a file that was not ours stays untouched
        else:
            out.not_retried.append(dict(rec))
    return out


def _runnable(item: J.Job | J.Rejected) -> J.Job | J.Rejected:
    """The job itself when its only problem is that its (own, per the ledger) output exists."""
    if isinstance(item, J.Job) or item.job is None:
        return item
    return item.job if J.output_problem(item.job, "overwrite") is None else item


def _open_files() -> set[tuple[int, int]] | None:
    """(device, inode) of every file a process of this machine has open; None without /proc."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    seen: set[tuple[int, int]] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            seen.add((st.st_dev, st.st_ino))
    return seen


def clean_stale_temps(folders: Iterable[str | os.PathLike], grace: float | None = None) -> list[Path]:
    """Remove the `.metis-*.tmp` files of killed writers in `folders` (module docstring)."""
    if grace is None:
        try:
            grace = float(os.environ.get(STALE_TEMP_ENV, STALE_TEMP_SECONDS))
        except ValueError:
            raise UsageError(f"{STALE_TEMP_ENV}: must be a number of seconds") from None
    temps = []
    for folder in {Path(f) for f in folders}:
        try:
            temps += [p for p in folder.glob(".metis-*.tmp") if p.is_file()]
        except OSError:
            continue
    if not temps:
        return []
    busy = _open_files()
    now = time.time()
    removed = []
    for p in temps:
        try:
            st = p.stat()
        except OSError:
            continue
        if busy is not None and (st.st_dev, st.st_ino) in busy:
            continue
        if now - st.st_mtime < grace:
            continue
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


# ---- merging (metis results) ---------------------------------------------------------------------------


@dataclass
class Summary:
    files: list[Path]
    total: int | None  # planned items (from the headers), None when no header was found
    shards: int | None  # N of the run (from the headers)
    jobs: dict[str, dict[str, Any]]  # latest record per key
    absent_shards: list[int]  # shards of the run that wrote no ledger among `files`
    headers: list[dict[str, Any]] = field(default_factory=list)

    def status(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.jobs.values() if r.get("status") == name]

    @property
    def unrecorded(self) -> int:
        """Planned items no ledger mentions (e.g. a shard that never started)."""
        return max(0, (self.total or 0) - len(self.jobs))

    @property
    def complete(self) -> bool:
        return not self.status("error") and not self.status("pending") and self.unrecorded == 0

    def to_dict(self) -> dict[str, Any]:
        def brief(r: Mapping[str, Any]) -> dict[str, Any]:
            return {k: r.get(k) for k in ("origin", "output", "error", "shard") if r.get(k) is not None}

        return {
            "files": [str(p) for p in self.files],
            "total": self.total,
            "shards": self.shards,
            "ok": len(self.status("ok")),
            "skipped": len(self.status("skipped")),
            "failed": len(self.status("error")),
            "missing": len(self.status("pending")) + self.unrecorded,
            "in_flight": len(self.status("pending")),
            "unrecorded": self.unrecorded,
            "absent_shards": [f"{i}/{self.shards}" for i in self.absent_shards],
            "failures": [brief(r) for r in self.status("error")],
            "pending": [brief(r) for r in self.status("pending")],
            "complete": self.complete,
        }


def expand(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Ledger files named on the command line: a shard file as it is; a run's FILE.jsonl with all
    its shard files (`run_ledgers`). UsageError when a name has none."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if SHARD_RE.search(path.stem) and path.is_file():
            found = [path]
        else:
            found = run_ledgers(path)
        if not found:
            raise UsageError(f"{path}: no results ledger (nor {path.stem}.shard-*-of-*{path.suffix})")
        out += [f for f in found if f not in out]
    return out


def summarize(paths: Iterable[str | os.PathLike]) -> Summary:
    files = expand(paths)
    records: list[dict[str, Any]] = []
    headers: list[dict[str, Any]] = []
    for f in files:
        for rec in read_ledger(f):
            if rec.get("ledger") == LEDGER_TAG:
                headers.append(rec)
            else:
                records.append(rec)
    totals = [h["total"] for h in headers if isinstance(h.get("total"), int)]
    shards: list[Shard] = []
    for h in sorted(headers, key=lambda h: h.get("time") if isinstance(h.get("time"), (int, float)) else 0):
        s = h.get("shard")
        try:
            shards.append(Shard.parse(s) if isinstance(s, str) else Shard(0, 1))
        except UsageError:
            continue
    # N of the latest run (a resumed run may use another N than the first)
    n = shards[-1].count if shards else None
    present = {sh.index for sh in shards if sh.count == n}
    absent = [i for i in range(n) if i not in present] if n and n > 1 else []
    return Summary(files, max(totals) if totals else None, n, latest(records), absent, headers)


__all__ = [
    "Ledger",
    "Resumed",
    "Summary",
    "clean_stale_temps",
    "expand",
    "item_key",
    "key_of",
    "latest",
    "ledger_path",
    "output_complete",
    "read_ledger",
    "resume",
    "run_ledgers",
    "summarize",
]

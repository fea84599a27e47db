"""The results ledger: one JSON record per job, on disk as soon as the job finishes; resuming from it.

`--results FILE.jsonl` appends, per job, the record `--json` prints (inputs, output, seed,
status, error, timings...) plus `key` (the job's identity), `shard` and `time`; each line is
written, flushed and fsync'd when its job finishes, so a process killed at any moment loses at
most the jobs it had in flight. A sharded run writes one file per shard,
`FILE.shard-00003-of-00008.jsonl`, so no two processes ever append to one file.

Besides job records a ledger holds, per run (or shard) attempt, a header (`{"ledger":
"metis-results", "version": 2, "total": planned items before sharding, "shard": "3/8", "keys":
this shard's planned keys in plan order, "run": a digest of every planned key, "settings",
"threads", host, pid ...}`), a `pending` record per job as it starts (in flight until its record
comes) and a closing `summary`. Readers skip what they cannot parse (the torn last line of a
killed process).

Job identity (`key`, "DIGEST|OUTPUT"): DIGEST hashes the task and the real path of the job's
output (its slot; a bad manifest line without output: its problem, numbered when repeated), so a
job is found again whatever folder the run is started from, however the manifest is named or
spelled and whatever line the row is on. What the output was made from is recorded with each
success: `identity` (a digest of `job_identity`: the inputs' real path, size and mtime, the seed
unless drawn at random, the text fields, and the run's resolved `settings`: model, dtype,
decoding, long-form options), `input_identity` and `settings`.

Resume (`--resume`; `resume`): the latest record of each job decides, read from every ledger of
the run (every shard file, whatever N was):
* ok or skipped, the output there and complete (soundfile reads its header and its length is
  the recorded `output_seconds`), and made from what the job is now: done, not run again;
* ok but the output is gone or incomplete, or the row changed since (seed, inputs, text,
  options: a warning names the row and what changed), or pending (in flight when the process
  died): run again, replacing the output the run itself wrote;
* error: run again (`--retry-failed`, the default) or not (`--no-retry-failed`: it stays a
  failure and the exit code is 1);
* no record: planned as usual.
A version-1 ledger (keys by manifest line) is refused with a message. Temporary files
(`.metis-*.tmp`) that a killed process left in any output folder of the shard are removed when
no process on this machine has them open and they are older than `METIS_STALE_TEMP_SECONDS`
(default 600 s: a writer on another machine may be between two blocks of a long job).

One owner per shard (`ShardLock`): `fcntl.flock` on `LEDGER.lock`, which holds the owner's host
and pid; a second process on the same shard's ledger stops with a usage error naming them.

`summarize(paths)` merges ledgers for `metis results`: the jobs the latest attempt of each shard
planned (records of rows edited away since are not counted), failures in plan order, jobs
started and never finished, jobs not started, and shards that wrote no ledger. A file that is
not a ledger, or ledgers of two different runs, are usage errors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metis_cli import jobs as planning
from metis_cli.constants import CODEC_SAMPLE_RATE
from metis_cli.errors import UsageError
from metis_cli.runs.shard import Shard

LEDGER_TAG = "metis-results"
LEDGER_VERSION = 2  # 1: keys were `FILE:LINE|OUTPUT` (not resumable by this version)
FINISHED = ("ok", "error", "skipped")
SHARD_RE = re.compile(r"\.shard-(\d{5,})-of-(\d{5,})$")
STALE_TEMP_ENV = "METIS_STALE_TEMP_SECONDS"
STALE_TEMP_SECONDS = 600.0
LOSSY = (".ogg", ".oga", ".opus", ".mp3")  # formats whose frame count soundfile may only estimate


# ---- identity and file names ----------------------------------------------------------------------------


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, ensure_ascii=False, sort_keys=True, default=str)
    # surrogateescape: a file name that is not UTF-8 hashes as its own bytes
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _real(path: str | os.PathLike) -> str:
    """The absolute, symlink-free spelling of a path (it need not exist)."""
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return os.path.abspath(path)


def key_of(task: str, output: str | os.PathLike | None, what: str = "") -> str:
    """A job's identity: `DIGEST|OUTPUT`, DIGEST a hash of the task and the output file's real path
    (or, for an item without output, of `what`); OUTPUT as planned, for people reading the ledger.
    Only DIGEST identifies the job (`key_id`): a job is the same whatever the folder it was
    planned from, the manifest's name or the line it is on."""
    if output is None or str(output) == "":
        return f"{_digest(task, 'no-output', what)}|"
    where = "-" if str(output) == "-" else _real(output)
    return f"{_digest(task, where, what if where == '-' else '')}|{output}"


def key_id(key: str) -> str:
    """The identifying part of a key (`key_of`): the digest before the first `|`."""
    return key.split("|", 1)[0]


def _strip_origin(error: str, origin: str | None) -> str:
    return error[len(origin) + 2 :] if origin and error.startswith(origin + ": ") else error


def item_key(item: planning.Job | planning.Rejected, task: str | None = None) -> str:
    """The identity of a planned item (the same as its report's). Items without an output (a
    line that is not JSON) are named by their problem; `plan_keys` numbers repeats."""
    job = item if isinstance(item, planning.Job) else item.job
    if job is not None:
        stdin = "-" if planning.is_stdout(job.output) else ""
        what = (
            json.dumps({k: _real(v) for k, v in job.inputs.items() if isinstance(v, Path)}) if stdin else ""
        )
        return key_of(job.task, job.output, what)
    assert isinstance(item, planning.Rejected)
    what = _strip_origin(item.error, item.origin)
    return key_of(task or "", item.output or None, what if not item.output else "")


def plan_keys(plan: planning.Plan) -> list[str]:
    """The keys of a plan's items, in plan order; a repeated key (two identical bad lines) gets
    `#2`, `#3` ... by its order of appearance, so each item has its own."""
    seen: dict[str, int] = {}
    out = []
    for item in plan.items:
        key = item_key(item, plan.task)
        n = seen[key] = seen.get(key, 0) + 1
        if n > 1:
            digest, rest = key.split("|", 1)
            key = f"{digest}#{n}|{rest}"
        out.append(key)
    return out


def file_identity(path: Any) -> Any:
    """An input's identity: [real path, size, mtime in ns] (None when unreadable; "memory" for
    in-memory audio). Renaming or moving a file is a new identity; so is rewriting it."""
    if not isinstance(path, (str, os.PathLike)):
        return "memory"
    real = _real(path)
    try:
        st = os.stat(real)
    except OSError:
        return [real, None, None]
    return [real, st.st_size, st.st_mtime_ns]


def job_identity(job: planning.Job, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a job's output depends on: its inputs (`file_identity`), seed (unless drawn at
    random), text fields and the run's resolved settings (decoding, model, ...)."""
    return {
        "inputs": {role: file_identity(p) for role, p in sorted(job.inputs.items())},
        "seed": None if job.seed_drawn else job.seed,
        "text": job.text,
        "prompt_text": job.prompt_text,
        "language": job.language,
        "prompt_language": job.prompt_language,
        "duration": job.duration,
        "settings": dict(settings or {}),
    }


def identity_digest(identity: Mapping[str, Any]) -> str:
    return _digest(identity)


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
        f = open(path, encoding="utf-8", errors="surrogateescape")  # names as written (bytes kept)
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
    """The latest job record per job (`key_id`; by `time`, then reading order); pending records
    (a job started, never finished) count."""
    out: dict[str, dict[str, Any]] = {}
    rank: dict[str, tuple[float, int]] = {}
    for n, rec in enumerate(records):
        key = rec.get("key")
        if not isinstance(key, str) or rec.get("status") not in (*FINISHED, "pending"):
            continue
        key = key_id(key)
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
        self._lock = threading.Lock()  # client mode appends from worker threads too

    def open(self) -> Ledger:
        try:
            if str(self.path.parent):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            torn = self.path.is_file() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
            # surrogateescape: a file name that is not UTF-8 is written as its own bytes
            self._f = open(self.path, "a", encoding="utf-8", errors="surrogateescape")
            if torn:  # a killed writer's last line: start the next record on its own line
                self._f.write("\n")
        except OSError as exc:
            why = exc.strerror or exc
            raise UsageError(f"{self.path}: cannot write the results ledger ({why})") from None
        return self

    def append(self, record: Mapping[str, Any], sync: bool = True) -> None:
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            self._f.write(line)
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


class ShardLock:
    """One owner per ledger: an advisory `fcntl.flock` on `LEDGER.lock` (taken without waiting,
    released by the kernel when the process ends, however it ends). The lock file holds the
    owner's `host pid`, so a second process can say who runs the shard. The file stays. On a
    file system without flock the run goes on unlocked."""

    def __init__(self, ledger: str | os.PathLike) -> None:
        self.path = Path(f"{ledger}.lock")
        self._fd: int | None = None

    def acquire(self) -> ShardLock:
        import fcntl

        try:
            if str(self.path.parent):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(f"{self.path}: cannot create the lock file ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
            os.close(fd)
            who = f"host {owner[0]}, pid {owner[1]}" if len(owner) >= 2 else "another process"
            raise UsageError(
                f"{str(self.path)[: -len('.lock')]}: this run (shard) is already running ({who}); "
                "one process per shard"
            ) from None
        except OSError:  # a file system without flock (Lustre without -o flock): no lock to take
            os.close(fd)
            return self
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def header(
    task: str,
    shard: Shard | None,
    total: int,
    items: int,
    resumed: bool,
    keys: list[str] | None = None,
    run: str | None = None,
    settings: Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """A run's (or shard's) first line: `keys` are the ids (`key_id`) of this shard's planned
    items in plan order (what `metis results` counts), `run` a digest of every planned key of
    the whole run (the same in every shard)."""
    return {
        "ledger": LEDGER_TAG,
        "version": LEDGER_VERSION,
        "task": task,
        "shard": None if shard is None else str(shard),
        "total": total,
        "items": items,
        "resumed": resumed,
        "run": run,
        "settings": None if settings is None else dict(settings),
        "threads": threads,
        "keys": keys,
        "time": time.time(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def job_record(report: Mapping[str, Any], key: str, shard: Shard | None) -> dict[str, Any]:
    """A finished job's ledger record: its `--json` report plus key, shard and time."""
    return {**report, "key": key, "shard": None if shard is None else str(shard), "time": time.time()}


def pending_record(item: planning.Job, shard: Shard | None, key: str | None = None) -> dict[str, Any]:
    """A job that has started (written just before it runs): in flight until its record comes."""
    return {
        "key": key or item_key(item),
        "status": "pending",
        "origin": item.origin,
        "output": str(item.output),
        "shard": None if shard is None else str(shard),
        "time": time.time(),
    }


# ---- resuming ---------------------------------------------------------------------------------------------


@dataclass
class Resumed:
    plan: planning.Plan  # what is left to run
    done: int = 0  # finished before: not run again
    rerun: list[str] = field(default_factory=list)  # ok/pending before but must run again: why
    not_retried: list[dict[str, Any]] = field(default_factory=list)  # failed before, not retried
    keys: list[str] = field(default_factory=list)  # the keys of `plan.items`


def changed(record: Mapping[str, Any], identity: Mapping[str, Any]) -> str | None:
    """None when a recorded success was made from what the job is now (`job_identity`), else
    what changed (one phrase). Records without an identity (older runs) are taken as they are."""
    recorded = record.get("identity")
    if not isinstance(recorded, str) or recorded == identity_digest(identity):
        return None
    what = []
    if identity["seed"] is not None and record.get("seed") != identity["seed"]:
        what.append(f"seed {record.get('seed')} -> {identity['seed']}")
    if record.get("input_identity") not in (None, identity["inputs"]):
        what.append("input file")
    if record.get("settings") not in (None, identity["settings"]):
        old, new = _flat(record.get("settings") or {}), _flat(identity["settings"])
        names = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        what.append("options " + ", ".join(names) if names else "options")
    return ", ".join(what) or "text or job fields"


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"decoding": {"steps": 2}} -> {"decoding.steps": 2}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume(
    plan: planning.Plan,
    records: Mapping[str, Mapping[str, Any]],
    retry_failed: bool = True,
    keys: list[str] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Resumed:
    """Drop the plan's finished jobs (module docstring); `records`: `latest(...)` of the ledgers;
    `keys`: the items' keys (`plan_keys` of the whole run), `settings`: the run's resolved
    settings (a recorded success made with other settings, seed or inputs runs again)."""
    keys = plan_keys(plan) if keys is None else keys
    out = Resumed(planning.Plan(plan.task, [], list(plan.warnings)))

    def keep(item: planning.Job | planning.Rejected, key: str) -> None:
        out.plan.items.append(item)
        out.keys.append(key)

    for item, key in zip(plan.items, keys, strict=True):
        rec = records.get(key_id(key))
        if rec is None:
            keep(item, key)
            continue
        job = item if isinstance(item, planning.Job) else item.job
        status = rec.get("status")
        if status in ("ok", "skipped"):
            why = output_complete(rec, None if job is None else job.output)
            if why is None and job is not None and status == "ok":
                diff = changed(rec, job_identity(job, settings))
                if diff is not None:
                    why = f"{job.describe()}: changed since its recorded success ({diff})"
            if why is None:
                out.done += 1
                continue
            out.rerun.append(why)
            keep(_runnable(item), key)
        elif status == "pending":
            keep(_runnable(item), key)
        elif retry_failed:
            keep(item, key)  # as planned: a file that was not ours stays untouched
        else:
            out.not_retried.append(dict(rec))
    return out


def _runnable(item: planning.Job | planning.Rejected) -> planning.Job | planning.Rejected:
    """The job itself when its only problem is that its (own, per the ledger) output exists: it
    may replace that output (placement otherwise refuses a file it did not plan to replace)."""
    if isinstance(item, planning.Job) or item.job is None:
        return item
    if planning.output_problem(item.job, "overwrite") is not None:
        return item
    return dataclasses.replace(item.job, overwrite=True)


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
    jobs: dict[str, dict[str, Any]]  # latest record per key id (of planned jobs only, when known)
    absent_shards: list[int]  # shards of the run that wrote no ledger among `files`
    headers: list[dict[str, Any]] = field(default_factory=list)
    order: list[str] | None = None  # the planned keys in plan order (None: a version-1 ledger)

    def status(self, name: str) -> list[dict[str, Any]]:
        recs = [r for r in self.jobs.values() if r.get("status") == name]
        if self.order is not None:
            pos = {key_id(k): i for i, k in enumerate(self.order)}
            recs.sort(key=lambda r: pos.get(key_id(str(r.get("key"))), len(pos)))
        return recs

    @property
    def not_started(self) -> list[str]:
        """Planned keys (known from the headers) with no record: never started."""
        return [] if self.order is None else [k for k in self.order if key_id(k) not in self.jobs]

    @property
    def unrecorded(self) -> int:
        """Planned items no ledger mentions (not started, or in a shard that never started)."""
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
            "not_started": [k.partition("|")[2] or key_id(k) for k in self.not_started],
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


def _when(rec: Mapping[str, Any]) -> float:
    t = rec.get("time")
    return float(t) if isinstance(t, (int, float)) else 0.0


def _read_checked(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(headers, other records) of one ledger; UsageError when it is empty or not a ledger."""
    headers, records = [], []
    for rec in read_ledger(path):
        (headers if rec.get("ledger") == LEDGER_TAG else records).append(rec)
    if not headers:
        what = "is empty" if not records else "has no metis-results header (a manifest?)"
        raise UsageError(f"{path}: not a results ledger: the file {what}")
    return headers, records


def _base(path: Path) -> str:
    """The run a ledger file belongs to: its name without the shard part."""
    m = SHARD_RE.search(path.stem)
    return str(path.with_name(path.stem[: m.start()] + path.suffix)) if m else str(path)


def summarize(paths: Iterable[str | os.PathLike]) -> Summary:
    """Merge the ledgers of one run (module docstring). UsageError for a file that is not a
    ledger, and for ledgers of two different runs given together."""
    files = expand(paths)
    records: list[dict[str, Any]] = []
    headers: list[dict[str, Any]] = []
    runs: dict[str, tuple[str, Any]] = {}
    for f in files:
        hs, rs = _read_checked(f)
        headers += hs
        records += rs
        last = max(hs, key=_when)
        base = _base(f)
        if base not in runs or _when(last) >= _when(runs[base][1]):
            runs[base] = (str(last.get("run")), last)
    ids = {run for run, _ in runs.values()}
    if len(ids) > 1:
        raise UsageError(
            f"{', '.join(sorted(runs))}: ledgers of different runs (their planned jobs differ); "
            "give one run's ledger at a time"
        )
    shards: list[tuple[Shard, dict[str, Any]]] = []
    for h in sorted(headers, key=_when):
        s = h.get("shard")
        try:
            shards.append((Shard.parse(s) if isinstance(s, str) else Shard(0, 1), h))
        except UsageError:
            continue
    # N of the latest run (a resumed run may use another N than the first)
    n = shards[-1][0].count if shards else None
    current = {sh.index: h for sh, h in shards if sh.count == n}  # the latest header per shard
    absent = [i for i in range(n) if i not in current] if n and n > 1 else []
    order = _planned_order(current, n or 1)
    totals = [h["total"] for h in current.values() if isinstance(h.get("total"), int)]
    if order is None:
        totals = [h["total"] for h in headers if isinstance(h.get("total"), int)]
    jobs = latest(records)
    if order is not None:
        wanted = {key_id(k) for k in order}
        jobs = {k: r for k, r in jobs.items() if k in wanted}
    return Summary(files, max(totals) if totals else None, n, jobs, absent, headers, order)


def _planned_order(current: Mapping[int, Mapping[str, Any]], n: int) -> list[str] | None:
    """The planned keys of the latest headers in plan order (shard i holds items i, i+N, ...);
    None when a header has no keys (a version-1 ledger)."""
    if not current or any(not isinstance(h.get("keys"), list) for h in current.values()):
        return None
    lists = {i: h["keys"] for i, h in current.items()}
    longest = max(len(k) for k in lists.values())
    return [lists[i][j] for j in range(longest) for i in range(n) if i in lists and j < len(lists[i])]


__all__ = [
    "Ledger",
    "ShardLock",
    "changed",
    "file_identity",
    "job_identity",
    "key_id",
    "plan_keys",
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

"""Ray Data: the planned jobs of a manifest as a Dataset, one callable class per task for
`Dataset.map_batches` (optional extra `metis-cli[ray]`).

    import ray
    from metis_cli.runs import ray as metis_ray

    metis_ray.require(actors=8, num_gpus=1, timeout=60)  # fail fast on a cluster without GPUs
    ds = metis_ray.read_manifest("jobs.jsonl", "se", output="clean/")   # planned jobs, one row each
    results = ds.map_batches(
        metis_ray.Enhance,                                  # Enhance, TSE, VC, TTS, L2S
        fn_constructor_kwargs={"steps": 10, "dtype": "bfloat16"},  # metis_cli.load keywords
        compute=ray.data.ActorPoolStrategy(size=8),        # or concurrency=8 (older Ray)
        num_gpus=1, batch_size=4,
    )
    results.write_parquet("results/")                      # or .write_json(...), .iter_rows()

Planning is the CLI's (`jobs.plan`: the same naming, validation and existing-output policy), done
once on the driver; bad manifest lines and rejected jobs are rows too (status "error" or
"skipped"), passed through without running. Each actor loads its pipeline once (lazily, on its
first batch) and runs its batches through `Pipeline.run`, which writes every output atomically
(temporary file + rename). A bad item is an error row, never an actor crash: the engine isolates
each job's failure, and anything else raised while running a batch (a model that cannot load)
becomes an error row for each of the batch's jobs.

Rows in (`read_manifest`, `plan_rows`): key, origin, output (as planned), status ("" = to run),
error, job (the job as JSON, paths absolute so that workers in other folders find them).
Rows out (`RESULT_SCHEMA`): key, origin, output, status, error, seed, audio_seconds,
output_seconds, processing_seconds, host, pid, record (the `--json` report as JSON).
`metis ray TASK --manifest ...` (metis_cli/cli/ray_cmd.py) runs `drive` with the CLI's ledger.
A request the cluster can never hold (`num_gpus=1` on CPU nodes) makes Ray Data wait for ever:
`require(actors, num_cpus, num_gpus, timeout)` fails with the missing resource instead.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from metis_cli import jobs, options
from metis_cli.core.tasks import Job
from metis_cli.errors import MetisError, UsageError
from metis_cli.runs.ledger import plan_keys
from metis_cli.runs.session import Session

TASK_NAMES = {**options.TASK_ALIASES, **{task: task for task in options.ALL_TASKS}}  # name -> task

_JOB_FIELDS = ("text", "prompt_text", "language", "prompt_language", "duration", "origin", "job_id")


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("key", pa.string()),
            ("origin", pa.string()),
            ("output", pa.string()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("seed", pa.int64()),
            ("audio_seconds", pa.float64()),
            ("output_seconds", pa.float64()),
            ("processing_seconds", pa.float64()),
            ("host", pa.string()),
            ("pid", pa.int64()),
            ("record", pa.string()),
        ]
    )


RESULT_COLUMNS = (
    "key origin output status error seed audio_seconds output_seconds processing_seconds host pid record"
).split()


# ---- jobs as rows ------------------------------------------------------------------------------------------


def job_to_json(job: Job) -> str:
    """A planned job as JSON (paths made absolute)."""
    d: dict[str, Any] = {
        "task": job.task,
        "inputs": {k: os.path.abspath(str(v)) for k, v in job.inputs.items()},
        "output": str(job.output) if jobs.is_stdout(job.output) else os.path.abspath(str(job.output)),
        "seed": job.seed,
        # the placement policy travels with the job: a resumed job may replace its own output
        "overwrite": job.overwrite,
        "seed_drawn": job.seed_drawn,
    }
    d.update({k: getattr(job, k) for k in _JOB_FIELDS if getattr(job, k) is not None})
    return json.dumps(d, ensure_ascii=False)


def job_from_json(text: str) -> Job:
    d = json.loads(text)
    return Job(
        task=d["task"],
        inputs={k: Path(v) for k, v in d["inputs"].items()},
        output=Path(d["output"]),
        seed=int(d["seed"]),
        overwrite=bool(d.get("overwrite", False)),
        seed_drawn=bool(d.get("seed_drawn", False)),
        **{k: d.get(k) for k in _JOB_FIELDS},
    )


def plan_rows(plan: jobs.Plan, keys: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per planned item (a job to run, or a rejected one with its status and error);
    `keys`: the items' ledger keys (default: `ledger.plan_keys(plan)`)."""
    rows = []
    keys = plan_keys(plan) if keys is None else keys
    for item, key in zip(plan.items, keys, strict=True):
        job = item if isinstance(item, Job) else item.job
        row = {
            "key": key,
            "origin": job.origin if job is not None else item.origin,
            "output": str(job.output) if job is not None else (item.output or ""),
            "status": "",
            "error": None,
            "job": None if job is None else job_to_json(job),
        }
        if isinstance(item, jobs.Rejected):
            row["status"], row["error"] = item.status, item.error or None
        rows.append(row)
    return rows


def read_manifest(
    path: str | os.PathLike,
    task: str,
    output: str | os.PathLike | None = None,
    seed: int | None = None,
    existing: str = "error",
    language: str | None = "auto",
) -> Any:
    """The planned jobs of a manifest as a `ray.data.Dataset` (one row per manifest line).

    task: se (or enhance), tse, vc, tts, l2s; output: the -o folder; seed: for rows without one;
    existing: "error" | "overwrite" | "skip" (the CLI's policy)."""
    import ray.data

    plan = jobs.plan(
        jobs.Request(
            task=_task(task),
            manifest=Path(path),
            output=None if output is None else Path(output),
            seed=seed,
            existing=existing,
            language=language,
        )
    )
    return ray.data.from_items(plan_rows(plan))


def _task(name: str) -> str:
    try:
        return TASK_NAMES[name]
    except KeyError:
        from metis_cli.errors import UsageError

        raise UsageError(f"unknown task '{name}' (known: {', '.join(TASK_NAMES)})") from None


# ---- the actors ----------------------------------------------------------------------------------------


def _batch_rows(batch: Any) -> list[dict[str, Any]]:
    """A Ray batch (numpy dict, pandas DataFrame or pyarrow Table) as a list of row dicts."""
    if hasattr(batch, "to_pylist"):  # pyarrow.Table
        return batch.to_pylist()
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas.DataFrame
        return batch.to_dict("records")
    columns = {k: (v.tolist() if hasattr(v, "tolist") else list(v)) for k, v in batch.items()}
    n = len(next(iter(columns.values()))) if columns else 0
    return [{k: columns[k][i] for k in columns} for i in range(n)]


class TaskActor:
    """Runs planned job rows of one task; constructed once per actor (`fn_constructor_kwargs`:
    `metis_cli.load` keywords: model, device, dtype, steps, batch_size, checkpoint_dir, ...)."""

    task: str = ""

    def __init__(self, **options: Any) -> None:
        from metis_cli.api import load

        self.options = dict(options)
        self.pipe = load(self.task, wording="cli", **self.options)  # validates now; weights load on first use
        self.host, self.pid = socket.gethostname(), os.getpid()

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        return pa.Table.from_pylist(self._run_rows(_batch_rows(batch)), schema=_schema())

    def _run_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results: list[dict[str, Any] | None] = [None] * len(rows)
        items: list[jobs.Job | jobs.Rejected] = []
        where: list[int] = []
        for i, row in enumerate(rows):
            if row.get("status"):  # rejected when planned: reported as it is
                results[i] = self._row(row, self._rejected_record(row))
                continue
            try:
                job = job_from_json(row["job"])
                if job.task != self.task:
                    raise ValueError(f"a {job.task} job given to the {self.task} actor")
            except Exception as exc:
                where_ = row.get("origin") or row.get("key")
                results[i] = self._row(row, _error_record(row, f"{where_}: {exc}"))
                continue
            items.append(job)
            where.append(i)
        if items:
            try:
                reports = list(self.pipe.run(jobs.Plan(self.task, items)))
                for i, rep in zip(where, reports, strict=True):
                    results[i] = self._row(rows[i], rep.to_dict())
            except Exception as exc:  # e.g. the model cannot load: every job of the batch fails
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                for i in where:
                    if results[i] is None:
                        results[i] = self._row(rows[i], _error_record(rows[i], msg))
        return [r for r in results if r is not None]

    def _rejected_record(self, row: Mapping[str, Any]) -> dict[str, Any]:
        rec = _error_record(row, row.get("error") or "")
        rec["status"] = row["status"]
        rec["error"] = row.get("error") or None
        if row.get("job"):
            rec["inputs"] = json.loads(row["job"]).get("inputs", {})
        return rec

    def _row(self, row: Mapping[str, Any], record: dict[str, Any]) -> dict[str, Any]:
        record["output"] = row.get("output") or record.get("output") or ""  # as planned
        if row.get("origin") and not record.get("origin"):
            record["origin"] = row["origin"]
        return {
            "key": row["key"],
            "origin": row.get("origin"),
            "output": record["output"],
            "status": record.get("status"),
            "error": record.get("error"),
            "seed": record.get("seed"),
            "audio_seconds": record.get("audio_seconds"),
            "output_seconds": record.get("output_seconds"),
            "processing_seconds": record.get("processing_seconds"),
            "host": self.host,
            "pid": self.pid,
            "record": json.dumps(record, ensure_ascii=False, default=str),
        }


def _error_record(row: Mapping[str, Any], error: str) -> dict[str, Any]:
    seed = None
    if row.get("job"):
        try:
            seed = json.loads(row["job"]).get("seed")
        except (TypeError, ValueError):
            pass
    return {
        "inputs": {},
        "output": row.get("output") or "",
        "seed": seed,
        "status": "error",
        "error": error,
        "origin": row.get("origin"),
    }


class Enhance(TaskActor):
    """Speech enhancement (`metis enhance`)."""

    task = "se"


class TSE(TaskActor):
    """Target speaker extraction (`metis tse`)."""

    task = "tse"


class VC(TaskActor):
    """Voice conversion (`metis vc`)."""

    task = "vc"


class TTS(TaskActor):
    """Zero-shot text-to-speech (`metis tts`)."""

    task = "tts"


class L2S(TaskActor):
    """Lip-to-speech (`metis l2s`)."""

    task = "l2s"


ACTORS: dict[str, type[TaskActor]] = {"se": Enhance, "tse": TSE, "vc": VC, "tts": TTS, "l2s": L2S}


def actor_class(task: str) -> type[TaskActor]:
    """The callable class of a task name (se/enhance, tse, vc, tts, l2s)."""
    return ACTORS[_task(task)]


def result_records(rows: Iterable[Mapping[str, Any]]) -> Iterable[tuple[str, dict[str, Any]]]:
    """(key, `--json` record) of each result row."""
    for row in rows:
        yield row["key"], json.loads(row["record"])


# ---- the cluster: fail fast, not hang -----------------------------------------------------------------


def probe_address(address: str, timeout: float, name: str = "--address") -> None:
    """UsageError naming the address when nothing answers at HOST:PORT (or ray://HOST:PORT)
    within `timeout` seconds; `auto` and addresses without a port are left to Ray."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise UsageError(
            f"{name} {address}: no Ray cluster answers ({why}; waited up to {timeout:g} s)"
        ) from None


def shortfall(
    nodes: Iterable[Mapping[str, Any]], actors: int, cpus: float, gpus: float, names: Mapping[str, str]
) -> str | None:
    """Why the alive nodes (`ray.nodes()`) can never hold `actors` actors of `cpus` CPUs and
    `gpus` GPUs each (an actor lives on one node), or None. `names`: how to call the three
    requests in the message (flags or keyword names)."""
    alive = [dict(n.get("Resources") or {}) for n in nodes if n.get("Alive")]

    def fits(res: Mapping[str, float]) -> int:
        n = math.floor(res.get("CPU", 0.0) / cpus + 1e-9) if cpus > 0 else actors
        if gpus > 0:
            n = min(n, math.floor(res.get("GPU", 0.0) / gpus + 1e-9))
        return n

    room = sum(fits(r) for r in alive)
    if room == 0:
        most_gpu = max((r.get("GPU", 0.0) for r in alive), default=0.0)
        if gpus > most_gpu:
            most = f"most on one node: {most_gpu:g}"
            return f"{names['gpus']} {gpus:g}: no node of the cluster has {gpus:g} GPU(s) ({most})"
        most_cpu = max((r.get("CPU", 0.0) for r in alive), default=0.0)
        most = f"most on one node: {most_cpu:g}"
        return f"{names['cpus']} {cpus:g}: no node of the cluster has {cpus:g} CPU(s) ({most})"
    if room < actors:
        each = f"{cpus:g} CPU(s)" + (f" and {gpus:g} GPU(s)" if gpus > 0 else "")
        return f"{names['actors']} {actors}: the cluster holds at most {room} actor(s) of {each}"
    return None


def require(actors: int = 1, num_cpus: float = 1.0, num_gpus: float = 0.0, timeout: float = 60.0) -> None:
    """Wait up to `timeout` s for the connected cluster to have nodes that can hold `actors`
    actors of `num_cpus` CPUs and `num_gpus` GPUs each (an autoscaler may add them); UsageError
    naming the missing resource otherwise. Call it before `map_batches(..., num_gpus=1)`, which
    would wait for ever on a cluster without GPUs."""
    import ray

    names = {"actors": "actors", "cpus": "num_cpus", "gpus": "num_gpus"}
    deadline = time.monotonic() + timeout
    while True:
        why = shortfall(ray.nodes(), actors, num_cpus, num_gpus, names)
        if why is None:
            return
        if time.monotonic() >= deadline:
            raise UsageError(why + (f" (waited {timeout:g} s)" if timeout > 0 else ""))
        time.sleep(0.5)


# ---- the driver (`metis ray`) ---------------------------------------------------------------------------


class ClusterError(MetisError):
    """The cluster failed during the run (a worker died, the head went away)."""


def load_kwargs(groups: Mapping[type, Any]) -> dict[str, Any]:
    """`metis_cli.load` keywords for the actors (paths absolute: workers run in other folders)."""
    kw: dict[str, Any] = {}
    for g in (options.ModelOptions, options.EngineOptions, options.LongformOptions, options.DecodingOptions):
        kw.update({k: getattr(groups[g], k) for k in options.names(g)})
    kw["offline"] = kw["offline"] or None
    for k in ("checkpoint_dir", "visual_checkpoint"):
        if kw.get(k) is not None:
            kw[k] = os.path.abspath(str(kw[k]))
    model = kw.get("model")
    if model is not None and Path(model).is_dir():
        kw["model"] = os.path.abspath(model)
    return kw


def _connect(ray: Any, opts: options.RayOptions, verbose: bool) -> bool:
    """Join the cluster (or start a local one); False when Ray was already initialised."""
    if ray.is_initialized():
        return False
    address = opts.address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        probe_address(address, opts.ray_timeout, "--address" if opts.address else "RAY_ADDRESS")
    local = {} if address is not None or opts.num_cpus is None else {"num_cpus": opts.num_cpus}
    handlers = {
        sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGINT)
    }
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=verbose,
        logging_level="DEBUG" if verbose else "ERROR",
        **local,
    )
    for sig, handler in handlers.items():  # Ray's own handlers abort the driver (no clean-up)
        if handler is not None:
            signal.signal(sig, handler)
    return True


def _wait_for_room(ray: Any, opts: options.RayOptions, remote: bool) -> None:
    """UsageError naming the resource when the cluster can never hold the actors (a remote
    cluster gets `--ray-timeout` seconds to grow; a local one is what it is)."""
    names = {"actors": "--workers", "cpus": "--cpus-per-worker", "gpus": "--gpus-per-worker"}
    deadline = time.monotonic() + (opts.ray_timeout if remote else 0.0)
    while True:
        why = shortfall(ray.nodes(), opts.workers, opts.cpus_per_worker, opts.gpus_per_worker, names)
        if why is None:
            return
        if time.monotonic() >= deadline:
            raise UsageError(why + (f" (waited {opts.ray_timeout:g} s)" if remote else ""))
        time.sleep(0.5)


def drive(
    session: Session,
    load_kw: Mapping[str, Any],
    opts: options.RayOptions,
    batch_size: int = 1,
    verbose: bool = False,
) -> Iterator[dict[str, Any]]:
    """Run a session's plan on Ray actors (one `metis_cli.load(**load_kw)` each); yield each
    finished job's `--json` record, recorded in the session's ledger first. Before anything
    runs, UsageError: Ray missing, the cluster's address not answering, resources the cluster
    can never hold. ClusterError: the cluster failed mid-run. A cluster started here is
    stopped on the way out."""
    rows = plan_rows(session.plan, session.keys)
    if not rows:
        return
    try:
        import ray
        import ray.data
    except ImportError:
        raise UsageError("metis ray needs Ray Data: pip install 'metis-cli[ray]'") from None
    if not verbose:  # Ray Data's execution notes and plans: not for stderr unless --verbose
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    started = _connect(ray, opts, verbose)
    try:
        remote = not started or bool(opts.address or os.environ.get("RAY_ADDRESS"))
        _wait_for_room(ray, opts, remote)
        session.start_all()
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the CLI's own (stderr); stdout carries results only
        batch = max(1, batch_size)
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), len(rows) // batch)))
        results = ds.map_batches(
            actor_class(session.plan.task),
            fn_constructor_kwargs=dict(load_kw),
            compute=ray.data.ActorPoolStrategy(size=opts.workers),
            num_cpus=opts.cpus_per_worker,
            num_gpus=opts.gpus_per_worker or None,
            batch_size=batch,
            batch_format="pyarrow",
        )
        try:
            for block in results.iter_batches(batch_size=None, batch_format="pyarrow"):
                for row in block.to_pylist():
                    rec = json.loads(row["record"])
                    session.record_dict(rec, row["key"])
                    yield rec
        except Exception as exc:  # the cluster failed (a worker died, the head went away)
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ClusterError(
                f"ray: {type(exc).__name__}: {why} (finished jobs are in the ledger; rerun with --resume)"
            ) from None
    finally:
        if started:
            ray.shutdown()


__all__ = [
    "ACTORS",
    "ClusterError",
    "drive",
    "load_kwargs",
    "probe_address",
    "require",
    "shortfall",
    "Enhance",
    "L2S",
    "RESULT_COLUMNS",
    "TSE",
    "TTS",
    "TaskActor",
    "VC",
    "actor_class",
    "job_from_json",
    "job_to_json",
    "plan_rows",
    "read_manifest",
    "result_records",
]

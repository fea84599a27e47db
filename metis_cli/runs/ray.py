"""Ray Data: the planned jobs of a manifest as a Dataset, one callable class per task for
`Dataset.map_batches` (optional extra `metis-cli[ray]`).

    import ray
    from metis_cli.runs import ray as metis_ray

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
`metis ray TASK --manifest ...` (metis_cli/cli/ray_cmd.py) runs this with the CLI's ledger.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from metis_cli import jobs as J
from metis_cli.core.tasks import Job
from metis_cli.runs.ledger import item_key

TASK_NAMES = {"enhance": "se", "se": "se", "tse": "tse", "vc": "vc", "tts": "tts", "l2s": "l2s"}

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
        "output": str(job.output) if J.is_stdout(job.output) else os.path.abspath(str(job.output)),
        "seed": job.seed,
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
        **{k: d.get(k) for k in _JOB_FIELDS},
    )


def plan_rows(plan: J.Plan) -> list[dict[str, Any]]:
    """One row per planned item (a job to run, or a rejected one with its status and error)."""
    rows = []
    for item in plan.items:
        job = item if isinstance(item, Job) else item.job
        row = {
            "key": item_key(item),
            "origin": job.origin if job is not None else item.origin,
            "output": str(job.output) if job is not None else (item.output or ""),
            "status": "",
            "error": None,
            "job": None if job is None else job_to_json(job),
        }
        if isinstance(item, J.Rejected):
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

    plan = J.plan(
        J.Request(
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
        items: list[J.Job | J.Rejected] = []
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
                reports = list(self.pipe.run(J.Plan(self.task, items)))
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


__all__ = [
    "ACTORS",
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

"""Client mode: `metis tts|vc|tse|enhance ... --server URL` (or METIS_SERVER).

The CLI plans the jobs as always (`jobs.plan`: inputs, output names, existing-output policy,
per-job seeds); each runnable job is then sent to a running `metis serve` instead of loading
models here: its input files are uploaded, the answer (WAV, PCM 16) is written to the job's
output atomically (`audio.write_audio_atomic`, the format the extension names), and the report
lines, JSON objects and exit codes are the CLI's own (`cli.report.execute`). A shell loop then
pays the model load once, in the service. `METIS_API_KEY` is sent as the Bearer token.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from metis_cli.errors import MetisError, UsageError
from metis_cli.options import command_of

ROUTE = {task: command_of(task) for task in ("se", "tse", "vc", "tts")}  # task -> its /v1/<route>
CONCURRENCY = 4  # requests in flight (the service batches them)
MAX_RETRIES = 20  # answers 429 (queue full) retried after Retry-After, this many times per job


class RemotePipeline:
    """A `Pipeline` whose jobs run on a `metis serve` at `url`: `run(plan)` yields the same
    Reports as a local pipeline (printing and exit codes stay with the caller). Use as a context
    manager (`RemotePipeline.connect(...)`); the HTTP connection closes on exit."""

    def __init__(self, client: Any, task: str, decoding: dict[str, Any]) -> None:
        self.client = client
        self.task = task
        self.decoding = {k: str(v) for k, v in decoding.items() if v is not None}

    @classmethod
    def connect(cls, url: str, task: str, decoding_overrides: dict[str, Any]) -> RemotePipeline:
        """Check that the service at `url` runs `task`. Raises UsageError for a task no server
        runs, MetisError when the service cannot be reached or does not run the task."""
        import httpx

        if task not in ROUTE:
            raise UsageError(f"--server: {task} cannot run on a server (it serves {', '.join(ROUTE)})")
        key = os.environ.get("METIS_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        timeout = httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None)
        client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        try:
            try:
                resp = client.get("/v1/models")
            except httpx.HTTPError as exc:
                raise MetisError(
                    f"--server {url}: cannot reach the service ({type(exc).__name__}: {exc})"
                ) from None
            if resp.status_code != 200:
                raise MetisError(f"--server {url}: {_remote_message(resp, _Nothing())}")
            served = [m.get("task") for m in resp.json().get("data", [])]
            if task not in served:
                raise MetisError(
                    f"--server {url}: the service does not run {task} (it runs: {', '.join(served)})"
                )
        except BaseException:
            client.close()
            raise
        return cls(client, task, decoding_overrides)

    def __enter__(self) -> RemotePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def run(
        self, plan: Any, on_chunk: Any = None, on_report: Any = None, on_start: Any = None, **_: Any
    ) -> Iterator[Any]:
        """Reports in plan order, like `api.Pipeline.run`; `on_start(job)` is called (from a
        worker thread) as each job is sent."""
        from metis_cli.jobs import Job

        items = plan.items
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            futures = [pool.submit(self._job, i, on_start) if isinstance(i, Job) else None for i in items]
            try:
                for item, fut in zip(items, futures, strict=True):
                    rep = fut.result() if fut is not None else _rejected(item)
                    if on_report is not None:
                        on_report(rep)
                    yield rep
            finally:
                for fut in futures:
                    if fut is not None:
                        fut.cancel()

    def _job(self, job: Any, on_start: Any = None) -> Any:
        from metis_cli.api import TEXT_IN_REPORT, Report

        if on_start is not None:
            on_start(job)
        rep = Report(
            inputs={k: str(v) for k, v in job.inputs.items()},
            output=str(job.output),
            seed=job.seed,
            status="error",
            origin=job.origin,
            id=job.job_id,
            text=job.text[:TEXT_IN_REPORT] if job.text else None,
        )
        try:
            files = {
                role: (Path(p).name, _read(Path(p)), "application/octet-stream")
                for role, p in job.inputs.items()
            }
        except _LocalError as exc:  # named like the local run's: "jobs.jsonl:31: in/x.wav: ..."
            rep.error = f"{job.origin}: {exc}" if job.origin else str(exc)
            return rep
        data = {"seed": str(job.seed), **self.decoding}
        if self.task == "tts":
            data.update(text=job.text, prompt_text=job.prompt_text)
            for k in ("language", "prompt_language", "duration"):
                if getattr(job, k) is not None:
                    data[k] = str(getattr(job, k))
        t0 = time.perf_counter()
        try:
            resp = self._post(f"/v1/{ROUTE[self.task]}", data, files)
        except Exception as exc:  # noqa: BLE001 - network failures fail this job with one line
            rep.error = f"{job.describe()}: server request failed ({type(exc).__name__}: {exc})"
            return rep
        if resp.status_code != 200:
            rep.error = _remote_message(resp, job)
            return rep
        try:
            _write(job.output, resp.content, replace=job.overwrite)
        except Exception as exc:  # noqa: BLE001 - the CLI's one-line output errors
            rep.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return rep
        h = resp.headers
        rep.status = "ok"
        rep.steps = _num(h.get("x-metis-steps"), int)
        rep.audio_seconds = _num(h.get("x-metis-audio-seconds"), float)
        rep.output_seconds = _num(h.get("x-metis-output-seconds"), float)
        rep.processing_seconds = round(time.perf_counter() - t0, 3)
        rep.info = {"server_processing_seconds": _num(h.get("x-metis-processing-seconds"), float)}
        return rep

    def _post(self, path: str, data: dict[str, str], files: dict[str, Any]) -> Any:
        for _attempt in range(MAX_RETRIES):
            resp = self.client.post(path, data=data, files=files)
            if resp.status_code != 429:
                return resp
            time.sleep(min(float(resp.headers.get("retry-after", "1") or 1), 30.0))
        return resp


class _LocalError(Exception):
    pass


def _read(path: Path) -> bytes:
    """An input file's bytes, with the CLI's wording for missing files."""
    if not path.exists():
        raise _LocalError(f"{path}: no such audio file")
    if not path.is_file():
        raise _LocalError(f"{path}: not a regular file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _LocalError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _write(output: Path, content: bytes, replace: bool = True) -> None:
    import soundfile as sf

    from metis_cli.constants import CODEC_SAMPLE_RATE
    from metis_cli.media.audio import write_audio_atomic

    if str(output) == "-":
        sys.stdout.buffer.write(content)
        sys.stdout.buffer.flush()
        return
    wav, sr = sf.read(io.BytesIO(content), dtype="float32")
    write_audio_atomic(output, wav, sr or CODEC_SAMPLE_RATE, replace=replace)


def _remote_message(resp: Any, job: Any) -> str:
    """The service's one-line message, with a request field named by the local file it came from."""
    try:
        msg = resp.json()["error"]["message"]
    except Exception:  # noqa: BLE001 - not our error shape
        msg = f"server answered HTTP {resp.status_code}"
    for role, p in job.inputs.items():
        if msg.startswith(role + ":"):
            return str(p) + msg[len(role) :]
    return msg if job.describe() in msg else f"{job.describe()}: {msg}"


def _num(value: str | None, kind: type) -> Any:
    try:
        return None if value is None else kind(value)
    except ValueError:
        return None


def _rejected(item: Any) -> Any:
    from metis_cli.api import rejected_report

    return rejected_report(item)


class _Nothing:
    inputs: dict = {}

    def describe(self) -> str:
        return "server"

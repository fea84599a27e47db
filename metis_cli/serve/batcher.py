"""Dynamic batching: one worker thread per pipeline, model work off the event loop.

Requests for one pipeline wait in a queue. The worker takes the oldest job and every queued
job with an equal `Decoding` (so they can share one padded batch), waits up to `max_wait_ms`
from the oldest job's arrival for more, and runs at most `max_batch` of them through
`Pipeline.generate(jobs, decoding)`: each job keeps its own seed and generator, and the
engine's failure isolation means one bad job never fails the others. Pipelines on one device
take turns (a lock per device). A job whose client has gone, or whose deadline has passed,
before its batch starts is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from metis_cli.api import Decoding, JobResult
from metis_cli.jobs import Job

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2  # how often a waiting request checks that its client is still connected
RECENT_BATCHES = 15  # batch times kept for the Retry-After estimate


class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__("queue full")
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    pass


class ClientGone(Exception):
    pass


class NotReady(Exception):
    """The pipeline's models could not be loaded (message: the one-line reason)."""


class BatchFailed(Exception):
    """The whole batch failed (an error about the models themselves)."""


@dataclass(eq=False)  # identity: two requests are never "equal"
class Work:
    job: Job
    decoding: Decoding
    deadline: float  # time.monotonic() by which the batch must have finished
    request_id: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    cancel_reason: str = "disconnected"  # why `cancelled` was set: "disconnected" | "deadline"
    batch_size: int = 0
    queue_seconds: float = 0.0

    def resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future.done():
                return
            if self.cancelled.is_set():  # nobody waits for it any more
                self.future.cancel()
            elif error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(value)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the event loop is closed: nobody waits any more
            pass


class Batcher:
    """The queue and worker thread of one pipeline."""

    def __init__(
        self,
        task: str,
        pipeline: Any,
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        metrics: Any,
        device_lock: threading.Lock,
        on_fatal: Callable[[str, str], None] | None = None,
    ) -> None:
        self.task = task
        self.pipeline = pipeline
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self.device_lock = device_lock
        self.on_fatal = on_fatal
        self.ready = threading.Event()
        self.load_error: str | None = None
        self._queue: deque[Work] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._recent: deque[float] = deque(maxlen=RECENT_BATCHES)  # batch seconds, for Retry-After
        self._thread = threading.Thread(target=self._main, name=f"metis-serve-{task}", daemon=True)

    # -- the event loop's side --------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def full(self) -> bool:
        return len(self._queue) >= self.max_queue

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the queued jobs, then end the worker."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join(timeout)

    def retry_after(self) -> int:
        """Seconds until the queue now waiting has drained: its batches x the median time of the
        recent batches (one long request does not inflate it)."""
        per_batch = statistics.median(self._recent) if self._recent else 1.0
        return max(1, math.ceil(per_batch * math.ceil(len(self._queue) / self.max_batch)))

    async def submit(
        self,
        job: Job,
        decoding: Decoding,
        deadline: float,
        request_id: str,
        disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> tuple[JobResult, Work]:
        """Queue a job and wait for its result. Raises QueueFull, NotReady, DeadlineExceeded,
        ClientGone or BatchFailed."""
        if self.load_error is not None:
            raise NotReady(self.load_error)
        loop = asyncio.get_running_loop()
        work = Work(job, decoding, deadline, request_id, loop, loop.create_future())
        with self._cv:
            if self._stopping:
                raise NotReady("the service is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(self.retry_after())
            self._queue.append(work)
            self.metrics.queue_depth.labels(self.task).set(len(self._queue))
            self._cv.notify_all()
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    work.cancel_reason = "deadline"
                    work.cancelled.set()
                    raise DeadlineExceeded()
                try:
                    result = await asyncio.wait_for(asyncio.shield(work.future), min(POLL_SECONDS, remaining))
                    return result, work
                except asyncio.TimeoutError:
                    pass
                if not work.started and disconnected is not None and await disconnected():
                    work.cancelled.set()
                    raise ClientGone()
        except asyncio.CancelledError:
            work.cancelled.set()
            raise

    # -- the worker thread ------------------------------------------------------------------------
    def _main(self) -> None:
        if not self._load():
            return
        while True:
            group = self._next_group()
            if group is None:
                return
            try:
                self._execute(group)
            except Exception as exc:  # noqa: BLE001 - never let the worker die: fail this group only
                log.error("%s: batch failed unexpectedly: %s", self.task, type(exc).__name__, exc_info=exc)
                for w in group:
                    w.resolve(error=BatchFailed(f"internal error ({type(exc).__name__})"))

    def _load(self) -> bool:
        t0 = time.perf_counter()
        try:
            with self.device_lock:
                self.pipeline.warm()
        except Exception as exc:  # noqa: BLE001 - any load failure: one line, the service is not ready
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.load_error = f"{self.task}: models could not be loaded ({text})"
            log.error("%s", self.load_error)
            log.debug("load failure", exc_info=exc)
            with self._cv:
                pending = list(self._queue)
                self._queue.clear()
            for w in pending:
                w.resolve(error=NotReady(self.load_error))
            if self.on_fatal is not None:
                self.on_fatal(self.task, self.load_error)
            return False
        seconds = time.perf_counter() - t0
        self.metrics.load_seconds.labels(self.task).set(seconds)
        self.metrics.ready.labels(self.task).set(1)
        log.info("%s: models loaded in %.2f s", self.task, seconds)
        self.ready.set()
        return True

    def _next_group(self) -> list[Work] | None:
        """The oldest job and the queued jobs with its decoding settings (at most max_batch),
        once max_wait has passed since the oldest arrived or the group is full."""
        with self._cv:
            while not self._queue:
                if self._stopping:
                    return None
                self._cv.wait()
            head = self._queue[0]
            while True:
                group = [w for w in self._queue if w.decoding == head.decoding][: self.max_batch]
                remaining = head.enqueued + self.max_wait - time.monotonic()
                if len(group) >= self.max_batch or remaining <= 0:
                    break
                self._cv.wait(remaining)
            for w in group:
                self._queue.remove(w)
            self.metrics.queue_depth.labels(self.task).set(len(self._queue))
            return group

    def _execute(self, group: list[Work]) -> None:
        now = time.monotonic()
        live: list[Work] = []
        for w in group:
            if w.cancelled.is_set():
                self.metrics.dropped.labels(self.task, w.cancel_reason).inc()
                log.info(
                    "%s: request %s dropped before its batch (%s)", self.task, w.request_id, w.cancel_reason
                )
                w.resolve(error=ClientGone())
            elif now >= w.deadline:
                self.metrics.dropped.labels(self.task, "deadline").inc()
                w.resolve(error=DeadlineExceeded())
            else:
                w.started = True
                w.queue_seconds = now - w.enqueued
                w.batch_size = 0
                live.append(w)
        if not live:
            return
        for w in live:
            w.batch_size = len(live)
            self.metrics.queue_seconds.labels(self.task).observe(w.queue_seconds)
        self.metrics.batch_size.labels(self.task).observe(len(live))
        log.info("%s: batch of %d (%s)", self.task, len(live), ", ".join(w.request_id for w in live))
        t0 = time.perf_counter()
        done = 0
        try:
            with self.device_lock:
                results = self.pipeline.generate([w.job for w in live], live[0].decoding)
                for w, res in zip(live, results, strict=False):  # results is lazy: resolve each as it comes
                    done += 1
                    w.resolve(res)
                if done < len(live):  # never leave a request waiting on a result that will not come
                    raise RuntimeError(f"the engine returned {done} results for {len(live)} jobs")
        except Exception as exc:  # noqa: BLE001 - a model error ends this batch, not the service
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.error("%s: batch failed: %s", self.task, text)
            log.debug("batch failure", exc_info=exc)
            for w in live[done:]:
                w.resolve(error=BatchFailed(text))
        self._recent.append(time.perf_counter() - t0)

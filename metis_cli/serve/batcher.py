"""Dynamic batching: one worker thread per pipeline, model work off the event loop.

Requests for one pipeline wait in a queue. The worker takes the oldest job and every queued
job with an equal `Decoding` (so they can share one padded batch), waits up to `max_wait_ms`
from the oldest job's arrival for more, and runs at most `max_batch` of them through
`Pipeline.generate(jobs, decoding)`: each job keeps its own seed and generator, and the
engine's failure isolation means one bad job never fails the others. Pipelines on one device
take turns (a lock per device). A job whose client has gone, or whose deadline has passed,
before its batch starts is dropped; once started, a batch whose clients have all gone (or
whose deadlines have all passed) stops at its next decoding step.

Long work never holds the worker: a stepped work (a streamed job, or a long input that the
engine makes chunk by chunk) is advanced one block per turn and then queued again at the back,
so the short jobs that arrived meanwhile run between its blocks (round robin). A streamed TTS
text is queued sentence piece by piece (`stream`'s caller submits piece after piece), so the
pieces of concurrent streams share padded batches like any short jobs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
    steps: Iterator[np.ndarray] | None = None  # a stepped work: one block per turn
    outbox: asyncio.Queue | None = None  # a stepped work's blocks, then END or an exception

    def push(self, item: Any) -> None:
        """Hand a stepped work's block (or END, or an exception) to the waiting request."""
        assert self.outbox is not None
        try:
            self.loop.call_soon_threadsafe(self.outbox.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody waits any more
            pass

    def resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        if self.outbox is not None:  # a stepped work ends with its error
            self.push(END if error is None else error)
            return

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


END = object()  # the last item of a stepped work's outbox


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
        ClientGone or BatchFailed. A long input runs as a stepped work (chunk by chunk, taking
        turns with the other requests)."""
        if self.load_error is not None:
            raise NotReady(self.load_error)
        if await asyncio.to_thread(self.pipeline.is_long, job):
            return await self._submit_long(job, decoding, deadline, request_id, disconnected)
        loop = asyncio.get_running_loop()
        work = Work(job, decoding, deadline, request_id, loop, loop.create_future())
        self._enqueue(work)
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
                if disconnected is not None and await disconnected():
                    work.cancelled.set()
                    raise ClientGone()
        except asyncio.CancelledError:
            work.cancelled.set()
            raise

    def _enqueue(self, work: Work) -> None:
        with self._cv:
            if self._stopping:
                raise NotReady("the service is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(self.retry_after())
            self._queue.append(work)
            self.metrics.queue_depth.labels(self.task).set(len(self._queue))
            self._cv.notify_all()

    async def stream(
        self,
        job: Job,
        decoding: Decoding,
        deadline: float,
        request_id: str,
        make_blocks: Callable[[Callable[[], bool]], Iterator[np.ndarray]],
        disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[np.ndarray]:
        """Run `make_blocks(cancelled)` as a stepped work and yield its blocks as they come.
        Raises as `submit` does, or the generation's own exception. Leaving the iteration early
        (the client went away) cancels the rest."""
        if self.load_error is not None:
            raise NotReady(self.load_error)
        work = self._stepped(job, decoding, deadline, request_id, make_blocks)
        async for block in self._blocks(work, disconnected):
            yield block

    def _stepped(
        self,
        job: Job,
        decoding: Decoding,
        deadline: float,
        request_id: str,
        make_blocks: Callable[[Callable[[], bool]], Iterator[np.ndarray]],
    ) -> Work:
        loop = asyncio.get_running_loop()
        work = Work(job, decoding, deadline, request_id, loop, loop.create_future())
        work.outbox = asyncio.Queue()
        work.steps = make_blocks(work.cancelled.is_set)
        return work

    async def _blocks(
        self, work: Work, disconnected: Callable[[], Awaitable[bool]] | None
    ) -> AsyncIterator[np.ndarray]:
        """Queue a stepped work and yield its blocks; leaving early cancels the rest."""
        assert work.outbox is not None
        self._enqueue(work)
        deadline = work.deadline
        ended = False
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    work.cancel_reason = "deadline"
                    raise DeadlineExceeded()
                try:
                    item = await asyncio.wait_for(work.outbox.get(), min(POLL_SECONDS, remaining))
                except asyncio.TimeoutError:
                    if disconnected is not None and await disconnected():
                        raise ClientGone() from None
                    continue
                if item is END or isinstance(item, BaseException):
                    ended = True
                    if item is END:
                        return
                    raise item
                self._requeue(work)  # its next block is made while this one is sent
                yield item
        finally:
            if not ended:  # the client left or the deadline passed: the remaining blocks stop
                work.cancelled.set()
                self._requeue(work)  # its next turn closes its generator (its own clean-up runs)
                self.metrics.dropped.labels(self.task, work.cancel_reason).inc()
                log.info("%s: request %s stopped (%s)", self.task, work.request_id, work.cancel_reason)

    def _requeue(self, work: Work) -> None:
        """A stepped work's next turn, at the back of the queue (round robin)."""
        with self._cv:
            self._queue.append(work)
            self.metrics.queue_depth.labels(self.task).set(len(self._queue))
            self._cv.notify_all()

    async def _submit_long(
        self,
        job: Job,
        decoding: Decoding,
        deadline: float,
        request_id: str,
        disconnected: Callable[[], Awaitable[bool]] | None,
    ) -> tuple[JobResult, Work]:
        """A long input as a stepped work, collected into one result (as `Engine.run` gives it)."""
        info: dict[str, Any] = {}
        blocks: list[np.ndarray] = []
        t0 = time.perf_counter()
        work = self._stepped(
            job, decoding, deadline, request_id,
            lambda cancelled: self.pipeline.long_blocks(job, decoding, info, cancelled),
        )  # fmt: skip
        try:
            async for block in self._blocks(work, disconnected):
                blocks.append(block)
        except (DeadlineExceeded, ClientGone, NotReady, QueueFull, BatchFailed):
            raise
        except Exception as exc:  # noqa: BLE001 - the job's own failure, reported like Pipeline.generate's
            res = self.pipeline.failure(job, exc)
            if res is None:  # an error about the models themselves
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise BatchFailed(text) from None
            res.seconds = time.perf_counter() - t0
            res.audio_seconds = info.get("audio_seconds")
            return res, work
        wav = np.concatenate([np.zeros(0, np.float32), *blocks]).astype(np.float32, copy=False)
        res = JobResult(job, wav, audio_seconds=info.pop("audio_seconds", None), output_samples=len(wav))
        res.seconds = time.perf_counter() - t0
        res.info = info
        return res, work

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
            if head.steps is not None:  # a stepped work: one block, alone
                self._queue.popleft()
                self.metrics.queue_depth.labels(self.task).set(len(self._queue))
                return [head]
            while True:
                group = [w for w in self._queue if w.steps is None and w.decoding == head.decoding]
                group = group[: self.max_batch]
                remaining = head.enqueued + self.max_wait - time.monotonic()
                if len(group) >= self.max_batch or remaining <= 0:
                    break
                self._cv.wait(remaining)
            for w in group:
                self._queue.remove(w)
            self.metrics.queue_depth.labels(self.task).set(len(self._queue))
            return group

    def _step(self, w: Work) -> None:
        """Advance a stepped work by one block, then queue it again at the back."""
        assert w.steps is not None
        now = time.monotonic()
        if w.cancelled.is_set() or now >= w.deadline:  # its request counts it as dropped
            w.steps.close()
            w.push(ClientGone() if w.cancelled.is_set() else DeadlineExceeded())
            return
        if not w.started:
            w.started, w.queue_seconds, w.batch_size = True, now - w.enqueued, 1
            self.metrics.queue_seconds.labels(self.task).observe(w.queue_seconds)
        t0 = time.perf_counter()
        try:
            with self.device_lock:
                block = next(w.steps)
        except StopIteration:
            w.push(END)
            return
        except Exception as exc:  # noqa: BLE001 - the work's own failure (or Cancelled): to its request
            w.push(exc)
            return
        finally:
            self._recent.append(time.perf_counter() - t0)
        self.metrics.batch_size.labels(self.task).observe(1)
        w.push(block)  # its request queues the next turn when it takes this block

    def _execute(self, group: list[Work]) -> None:
        if group[0].steps is not None:
            self._step(group[0])
            return
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
                results = self.pipeline.generate(
                    [w.job for w in live],
                    live[0].decoding,
                    cancelled=lambda: all(w.cancelled.is_set() for w in live),
                )
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

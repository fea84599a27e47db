"""The batcher's stepped works (streams, long inputs): one block per turn, round robin with the
short jobs, stopped when their client leaves (a stand-in engine: fast and deterministic)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from metis_cli.core.tasks import Job
from metis_cli.engine import Decoding, JobResult
from metis_cli.serve.batcher import Batcher, ClientGone
from metis_cli.serve.metrics import Metrics

DEC = Decoding(steps=2, cfg=0.0)
WAIT = 60.0  # generous: a loaded machine


class Engine:
    """A stand-in pipeline: records the order of short batches and stepped blocks in `events`."""

    task = "se"
    batch_size = 4

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def warm(self) -> None:
        pass

    def is_long(self, job) -> bool:
        return False

    def generate(self, jobs, decoding=None, on_chunk=None, cancelled=None):
        for j in jobs:
            self.events.append(("short", j.seed))
            yield JobResult(j, np.full(10, 0.1, np.float32))

    def blocks(self, n: int, gate: threading.Event | None = None, at_gate: threading.Event | None = None):
        for i in range(n):
            if i == 1 and gate is not None:
                at_gate.set()
                assert gate.wait(WAIT)
            self.events.append(("block", i))
            yield np.full(5, float(i), np.float32)


def _job(seed: int) -> Job:
    return Job("se", {}, "out.wav", seed)  # type: ignore[arg-type]


@pytest.fixture
def batcher():
    engine = Engine()
    b = Batcher(
        "se", engine, max_batch=4, max_wait_ms=0.0, max_queue=16,
        metrics=Metrics(4), device_lock=threading.Lock(),
    )  # fmt: skip
    b.start()
    yield b, engine
    b.stop(WAIT)


def test_a_long_stream_takes_turns_with_short_jobs(batcher):
    b, engine = batcher
    gate, at_gate = threading.Event(), threading.Event()

    async def main():
        deadline = time.monotonic() + WAIT
        got = []
        stream = b.stream(_job(1), DEC, deadline, "long", lambda cancelled: engine.blocks(6, gate, at_gate))
        async for block in stream:
            got.append(float(block[0]))
            if len(got) == 1:
                # the worker is inside the long one's second block: a short request arrives now
                assert await asyncio.to_thread(at_gate.wait, WAIT)
                short = asyncio.ensure_future(b.submit(_job(2), DEC, deadline, "short"))
                while b.depth < 1:  # only the short one can be queued while the long one runs
                    await asyncio.sleep(0.01)
                gate.set()
        res, _ = await short
        return got, res

    got, res = asyncio.run(main())
    assert got == [0, 1, 2, 3, 4, 5] and res.ok
    order = engine.events
    assert order.index(("short", 2)) < order.index(("block", 2))  # it did not wait for the end


def test_leaving_a_stream_stops_its_remaining_blocks(batcher):
    b, engine = batcher
    ended = threading.Event()

    def blocks(cancelled):
        try:
            yield from engine.blocks(50)
        finally:
            ended.set()

    async def main():
        stream = b.stream(_job(1), DEC, time.monotonic() + WAIT, "gone", blocks)
        async for _ in stream:
            break  # the client leaves after its first block
        await stream.aclose()

    asyncio.run(main())
    assert ended.wait(WAIT)
    assert len([e for e in engine.events if e[0] == "block"]) <= 2
    assert b.metrics.dropped.labels("se", "disconnected")._value.get() == 1


def test_a_stream_that_fails_raises_its_error(batcher):
    b, engine = batcher

    def blocks(cancelled):
        yield np.zeros(3, np.float32)
        raise ValueError("bad block")

    async def main():
        out = []
        with pytest.raises(ValueError, match="bad block"):
            async for block in b.stream(_job(1), DEC, time.monotonic() + WAIT, "x", blocks):
                out.append(block)
        return out

    assert len(asyncio.run(main())) == 1
    assert isinstance(ClientGone(), Exception)

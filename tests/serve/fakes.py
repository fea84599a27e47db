"""Stand-ins for `api.Pipeline` (fast, deterministic): the public surface the service uses."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np

from metis_cli.api import Decoding, JobResult
from metis_cli.errors import AudioError


class FakeEngine:
    """Records each batch (seeds, steps); sleeps `seconds` per batch; seed 13 fails alone."""

    def __init__(self, seconds: float, batch_size: int, task: str = "se") -> None:
        self.seconds = seconds
        self.options = SimpleNamespace(batch_size=batch_size)
        self.card = SimpleNamespace(name=f"fake-{task}")
        self.device = "cpu"
        self.batches: list[tuple[list[int], int]] = []
        self.lock = threading.Lock()

    def load_all(self) -> None:
        pass

    def run(self, jobs, decoding, write=True):
        assert write is False
        with self.lock:
            self.batches.append(([j.seed for j in jobs], decoding.steps))
        time.sleep(self.seconds)
        for j in jobs:
            if j.seed == 13:
                yield JobResult(j, None, error="input: bad luck", error_type=AudioError)
            else:
                yield JobResult(j, np.full(2400, 0.01 * (j.seed % 7), np.float32), audio_seconds=0.5)


class FakePipeline:
    """The public `api.Pipeline` surface the service uses, over a `FakeEngine`."""

    device = "cpu"

    def __init__(self, engine: FakeEngine, task: str = "se") -> None:
        self.engine = engine
        self.task = task
        self.model_name = engine.card.name
        self.batch_size = engine.options.batch_size

    def warm(self) -> None:
        self.engine.load_all()

    def generate(self, jobs, decoding=None, on_chunk=None, cancelled=None):
        return self.engine.run(jobs, decoding, write=False)

    def is_long(self, job) -> bool:
        return False

    def decoding(self, **kw):
        return Decoding(steps=kw.get("steps") or 10, cfg=0.0)

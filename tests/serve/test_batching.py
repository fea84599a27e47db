"""Dynamic batching with a stand-in engine (fast, deterministic): grouping by decoding, a full
queue (429 + Retry-After), deadlines (504), clients that leave before their batch starts."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serve.conftest import ServerThread, free_port, wav_bytes
from tests.serve.fakes import FakeEngine, FakePipeline


@pytest.fixture
def fake_server():
    started: list[ServerThread] = []

    def start(seconds: float, **config):
        from metis_cli.serve import ServeConfig
        from metis_cli.serve.app import create_app

        cfg = ServeConfig(**{"tasks": ("se",), "max_batch": 4, "max_wait_ms": 150.0, **config})
        engine = FakeEngine(seconds, cfg.max_batch)
        thread = ServerThread(create_app(cfg, {"se": FakePipeline(engine)}), free_port())
        thread.start()
        started.append(thread)
        return thread.url, engine

    yield start
    for t in started:
        t.stop()


AUDIO = wav_bytes(0.5, 16_000)


def _enhance(url: str, seed: int, steps: int = 10, timeout: float = 30) -> httpx.Response:
    return httpx.post(
        url + "/v1/enhance",
        data={"seed": str(seed), "steps": str(steps)},
        files={"input": ("a.wav", AUDIO)},
        timeout=timeout,
    )


def test_equal_decoding_shares_a_batch(fake_server):
    url, engine = fake_server(0.05, max_wait_ms=400.0)
    plan = [(1, 10), (2, 20), (3, 10), (4, 20), (5, 10), (13, 10)]
    with ThreadPoolExecutor(6) as pool:
        rs = list(pool.map(lambda p: _enhance(url, *p), plan))
    assert [r.status_code for r in rs] == [200, 200, 200, 200, 200, 422]
    assert rs[5].json()["error"]["message"] == "input: bad luck"  # the bad job fails alone
    for seeds, steps in engine.batches:  # one decoding per batch
        assert all(dict(plan)[s] == steps for s in seeds)
    by_steps = {steps: sorted(s for b, st in engine.batches if st == steps for s in b) for steps in (10, 20)}
    assert by_steps == {10: [1, 3, 5, 13], 20: [2, 4]}
    assert max(len(b) for b, _ in engine.batches) > 1
    assert len(engine.batches) <= 4
    assert {r.headers["x-metis-batch-size"] for r in rs[:5]} - {"1"}  # some answers came from a batch


def test_full_queue_answers_429_with_retry_after(fake_server):
    url, engine = fake_server(0.6, max_batch=1, max_queue=2, max_wait_ms=0.0)
    with ThreadPoolExecutor(6) as pool:
        futures = []
        for i in range(6):
            futures.append(pool.submit(_enhance, url, 100 + i))
            time.sleep(0.05)
        rs = [f.result() for f in futures]
    codes = [r.status_code for r in rs]
    assert 429 in codes and 200 in codes, codes
    full = next(r for r in rs if r.status_code == 429)
    assert int(full.headers["retry-after"]) >= 1
    assert full.json()["error"]["code"] == "queue_full"
    assert all(r.status_code in (200, 429) for r in rs)
    time.sleep(0.2)
    assert _enhance(url, 1).status_code == 200  # it recovers


def test_deadline_answers_504(fake_server):
    url, engine = fake_server(1.0, max_batch=1, max_wait_ms=0.0, request_timeout=0.5)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_enhance, url, 1)
        time.sleep(0.1)
        second = pool.submit(_enhance, url, 2)
        a, b = first.result(), second.result()
    assert a.status_code == 504 and b.status_code == 504
    assert "not finished within 0.5 s" in a.json()["error"]["message"]
    time.sleep(1.5)  # the first batch ends; the second job is dropped, never run
    assert [s for b, _ in engine.batches for s in b] == [1]
    metrics = httpx.get(url + "/metrics").text
    assert re.search(r'metis_dropped_jobs_total\{reason="deadline",task="se"\} 1\.0', metrics)


def test_client_gone_before_its_batch_is_dropped(fake_server):
    url, engine = fake_server(1.2, max_batch=1, max_wait_ms=0.0)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_enhance, url, 1)
        time.sleep(0.2)
        with pytest.raises(httpx.ReadTimeout):
            _enhance(url, 2, timeout=0.4)  # the client gives up while job 1 runs
        assert first.result().status_code == 200
    time.sleep(0.5)
    assert [s for b, _ in engine.batches for s in b] == [1]
    metrics = httpx.get(url + "/metrics").text
    assert re.search(r'metis_dropped_jobs_total\{reason="disconnected",task="se"\} 1\.0', metrics)
    assert _enhance(url, 3).status_code == 200


def test_readyz_waits_for_the_models(fake_server):
    from metis_cli.serve import ServeConfig
    from metis_cli.serve.app import create_app

    gate = threading.Event()

    class SlowEngine(FakeEngine):
        def load_all(self) -> None:
            gate.wait(10)

    engine = SlowEngine(0.0, 4)
    thread = ServerThread(
        create_app(ServeConfig(tasks=("se",), max_batch=4), {"se": FakePipeline(engine)}), free_port()
    )
    thread.start(ready_path="/healthz")
    try:
        r = httpx.get(thread.url + "/readyz")
        assert r.status_code == 503 and r.json()["tasks"] == {"se": "loading"}
        gate.set()
        deadline = time.monotonic() + 5
        while httpx.get(thread.url + "/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        gate.set()
        thread.stop()


def test_failed_load_is_503_with_its_message(fake_server):
    from metis_cli.serve import ServeConfig
    from metis_cli.serve.app import create_app

    class Broken(FakeEngine):
        def load_all(self) -> None:
            raise RuntimeError("weights missing\nsecond line")

    fatal = []
    app = create_app(
        ServeConfig(tasks=("se",), max_batch=4),
        {"se": FakePipeline(Broken(0.0, 4))},
        on_fatal=lambda t, m: fatal.append(m),
    )
    thread = ServerThread(app, free_port())
    thread.start(ready_path="/healthz")
    try:
        deadline = time.monotonic() + 5
        while not fatal:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert fatal == ["se: models could not be loaded (weights missing)"]
        assert httpx.get(thread.url + "/readyz").json()["tasks"] == {"se": "failed"}
        r = _enhance(thread.url, 1)
        assert r.status_code == 503 and r.json()["error"]["message"] == fatal[0]
    finally:
        thread.stop()

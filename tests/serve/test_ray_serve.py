"""`metis serve --ray`: the app as a Ray Serve deployment, two replicas on a local Ray cluster
(loopback only), both answering (issue 22)."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.serve.conftest import free_port, wav_bytes

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -e '.[ray-serve]'")

WAIT = 300.0  # a cold Ray cluster on a loaded 2-core machine


@pytest.mark.slow
def test_two_replicas_answer_the_same_endpoints(tiny_bundle):
    import ray

    from metis_cli.serve import ServeConfig, ray_serve

    config = ServeConfig(
        host="127.0.0.1", port=free_port(), tasks=("se",), max_batch=2, max_wait_ms=10.0,
        load_options={"checkpoint_dir": tiny_bundle, "offline": True, "steps": 2, "s2a_steps": "2,2"},
    )  # fmt: skip
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        url = ray_serve.start(config, replicas=2, cpus_per_replica=1.0)
        ready: set[str] = set()
        deadline = time.monotonic() + WAIT
        while len(ready) < 2 and time.monotonic() < deadline:  # each replica loads its own models
            r = httpx.get(url + "/readyz", timeout=60)
            if r.status_code == 200:
                ready.add(r.headers["x-metis-replica"])
        assert len(ready) == 2
        enhanced: dict[str, bytes] = {}
        audio = wav_bytes(0.5, 16_000)
        while len(enhanced) < 2 and time.monotonic() < deadline:
            r = httpx.post(
                url + "/v1/enhance", data={"seed": "3", "response_format": "pcm"},
                files={"input": ("a.wav", audio)}, timeout=120,
            )  # fmt: skip
            assert r.status_code == 200, r.text
            enhanced[r.headers["x-metis-replica"]] = r.content
        assert len(enhanced) == 2  # both replicas answered
        first, second = enhanced.values()
        assert first == second  # the same seed, the same samples, whichever replica
        streamed = httpx.post(
            url + "/v1/enhance", data={"seed": "3", "response_format": "pcm", "stream_format": "audio"},
            files={"input": ("a.wav", audio)}, timeout=120,
        )  # fmt: skip
        assert streamed.status_code == 200 and streamed.content == first
    finally:
        ray_serve.stop()
        ray.shutdown()

"""Prometheus metrics of one service (a registry per app, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    def __init__(self, max_batch: int) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "metis_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "metis_request_seconds", "Request latency (arrival to response).", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_seconds = Histogram(
            "metis_queue_seconds", "Time a job waited before its batch started.", ["task"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("metis_queue_depth", "Jobs waiting per pipeline.", ["task"], registry=r)
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, max_batch})
        self.batch_size = Histogram(
            "metis_batch_size", "Jobs per padded batch.", ["task"], buckets=buckets, registry=r
        )
        self.audio_in = Counter(
            "metis_audio_in_seconds", "Seconds of audio received (main inputs).", ["task"], registry=r
        )
        self.audio_out = Counter(
            "metis_audio_out_seconds", "Seconds of audio generated.", ["task"], registry=r
        )
        self.jobs = Counter("metis_jobs", "Jobs by task and outcome.", ["task", "status"], registry=r)
        self.dropped = Counter(
            "metis_dropped_jobs", "Jobs dropped before their batch started.", ["task", "reason"], registry=r
        )
        self.load_seconds = Gauge("metis_model_load_seconds", "Model load time.", ["task"], registry=r)
        self.ready = Gauge(
            "metis_pipeline_ready", "1 when the pipeline's models are loaded.", ["task"], registry=r
        )

        self.streams = Counter(
            "metis_streams", "Streamed responses by task and outcome (ok, disconnected, error).",
            ["task", "outcome"], registry=r,
        )  # fmt: skip
        self.first_audio = Histogram(
            "metis_first_audio_seconds", "Streamed responses: arrival to the first audio block.", ["task"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_cache = Counter(
            "metis_prompt_cache", "Speaker prompt encodings: cache hits and misses.", ["event"], registry=r
        )
        for event in ("hit", "miss"):
            self.prompt_cache.labels(event)

    def declare(self, task: str) -> None:
        """Show a pipeline's series from the start (zeros until something happens)."""
        for metric in (self.queue_seconds, self.batch_size, self.audio_in, self.audio_out):
            metric.labels(task)
        self.queue_depth.labels(task).set(0)
        self.ready.labels(task).set(0)
        for status in ("ok", "error"):
            self.jobs.labels(task, status)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

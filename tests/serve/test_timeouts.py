"""Slow, vanished and stopped clients on a real uvicorn server (`serve.server`, stand-in
pipelines): slow headers are closed, a slow body is 408, an aborted upload is no 500, a
shutdown past --shutdown-timeout answers 503 in JSON."""

from __future__ import annotations

import re
import socket
import threading
import time

import httpx
import pytest

from tests.serve.conftest import free_port, wav_bytes
from tests.serve.fakes import FakeEngine, FakePipeline

pytest.importorskip("uvicorn")

FILES = {"input": ("a.wav", wav_bytes(0.5, 16_000))}


class Running:
    """`serve.server.server(app, config)` in a thread."""

    def __init__(self, seconds: float = 0.0, **config) -> None:
        from metis_cli.serve import ServeConfig
        from metis_cli.serve.app import create_app
        from metis_cli.serve.server import server

        self.config = ServeConfig(**{"tasks": ("se",), "max_batch": 2, "port": free_port(), **config})
        self.engine = FakeEngine(seconds, 2)
        self.server = server(
            create_app(self.config, {"se": FakePipeline(self.engine)}), self.config, "warning"
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.config.port}"

    def __enter__(self) -> Running:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.config.port), timeout=30)
        return sock

    def metric(self, pattern: str, deadline_s: float = 30.0) -> None:
        """Wait until /metrics shows a line matching `pattern`."""
        deadline = time.monotonic() + deadline_s
        while not re.search(pattern, httpx.get(self.url + "/metrics").text):
            assert time.monotonic() < deadline, pattern
            time.sleep(0.05)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_slow_headers_are_closed_and_a_slow_body_is_408():
    with Running(body_timeout=1.0) as srv:
        t0 = time.monotonic()
        with srv.connect() as sock:
            sock.sendall(b"POST /v1/enhance HTTP/1.1\r\nHost: x\r\n")  # the headers never end
            assert _read_all(sock) == b""  # closed by the server
        assert time.monotonic() - t0 < 20
        with srv.connect() as sock:
            sock.sendall(
                b"POST /v1/enhance HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 1000\r\n\r\n--b\r\n"
            )
            answer = _read_all(sock)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"code":"body_timeout"' in answer
        assert httpx.get(srv.url + "/healthz").status_code == 200


def test_an_aborted_upload_is_no_server_error():
    with Running() as srv:
        with srv.connect() as sock:
            sock.sendall(
                b"POST /v1/enhance HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 100000\r\n\r\n--b\r\n" + b"x" * 1000
            )
        srv.metric(r'metis_requests_total\{endpoint="/v1/enhance",status="499"\} 1\.0')
        assert 'status="500"' not in httpx.get(srv.url + "/metrics").text
        ok = httpx.post(
            srv.url + "/v1/enhance", files={"input": ("a.wav", wav_bytes(0.5, 16_000))}, timeout=30
        )
        assert ok.status_code == 200


def test_shutdown_past_its_timeout_answers_503_json():
    answers: list[httpx.Response] = []
    with Running(seconds=5.0, shutdown_timeout=0.5) as srv:
        sender = threading.Thread(
            target=lambda: answers.append(
                httpx.post(
                    srv.url + "/v1/enhance", files={"input": ("a.wav", wav_bytes(0.5, 16_000))}, timeout=60
                )
            )
        )
        sender.start()
        deadline = time.monotonic() + 30
        while not srv.engine.batches:  # the request's batch is running
            assert time.monotonic() < deadline
            time.sleep(0.02)
    sender.join(60)
    (r,) = answers
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "shutting_down"

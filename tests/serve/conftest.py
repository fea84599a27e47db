"""A real uvicorn server on 127.0.0.1 (a free port) running the tiny bundle, shared by the tests."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from tests.conftest import speechlike

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[test]'")

API_KEY = "test-key-123"
VOICE_TEXT = "A prompt text for the voice."
FAST_FIELDS = {"steps": "2", "s2a_steps": "2,2"}


@pytest.fixture(autouse=True)
def _hub_offline_restored():
    """An in-process `metis ... --offline` turns HF_HUB_OFFLINE on for the whole process
    (cards.quiet_hub); put it back so that later test files see the environment they expect."""
    import huggingface_hub.constants as hub

    env, const = os.environ.get("HF_HUB_OFFLINE"), hub.HF_HUB_OFFLINE
    yield
    if env is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = env
    hub.HF_HUB_OFFLINE = const


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wav_bytes(seconds: float, sr: int = 24_000, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, speechlike(seconds, sr, seed), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@dataclass
class Served:
    url: str
    key: str
    folder: Path
    app: Any
    server: Any

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


class ServerThread:
    """uvicorn.Server in a thread (signals stay with pytest); stopped like SIGTERM stops it."""

    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def start(self, ready_path: str = "/readyz", timeout: float = 120.0) -> None:
        import httpx

        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if not self.thread.is_alive():
                raise RuntimeError("the server thread ended")
            time.sleep(0.1)
        raise TimeoutError(f"{self.url}{ready_path} not ready within {timeout} s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


# three sentences of at most 40 characters, no two of which fit in 40: with --max-chars 40 the
# stream's pieces (first sentence alone, then packed) are the long path's pieces
STREAM_TEXT = "The first one is short. The second sentence is a bit longer. And here is the third."
STREAM_WAIT = 120.0  # generous deadlines: a loaded 2-core machine


def stream_server(
    tiny_bundle: Path, folder: Path, tasks: tuple[str, ...] = ("tts",), **options: Any
) -> tuple[Served, ServerThread]:
    """A started server (voice "alice" in `folder`) whose texts are spoken in pieces of at most
    40 characters (see STREAM_TEXT); `options`: `voices_dir`, `max_upload_mb` and load options."""
    from metis_cli.serve import Limits, ServeConfig
    from metis_cli.serve.app import create_app

    sf.write(folder / "alice.wav", speechlike(3.0, seed=5), 24_000)
    (folder / "voices.json").write_text(
        json.dumps({"alice": {"audio": "alice.wav", "text": VOICE_TEXT, "language": "en"}})
    )
    max_upload_mb = options.pop("max_upload_mb", 2.0)
    config = ServeConfig(
        tasks=tasks,
        max_batch=4,
        max_wait_ms=20.0,
        max_queue=32,
        request_timeout=STREAM_WAIT,
        api_key=API_KEY,
        voices_file=folder / "voices.json",
        voices_dir=options.pop("voices_dir", None),
        limits=Limits(max_upload_mb=max_upload_mb, max_audio_seconds=30.0, max_text_chars=400, max_steps=50),
        load_options={
            "checkpoint_dir": tiny_bundle, "offline": True, "steps": 2, "s2a_steps": "2,2", "max_chars": 40,
            **options,
        },
    )  # fmt: skip
    app = create_app(config)
    thread = ServerThread(app, free_port())
    thread.start()
    return Served(thread.url, API_KEY, folder, app, thread.server), thread


class Gate:
    """Holds the TTS pipeline's generation of every piece after the first until `open()` (then
    runs it, or with `fail` raises as a model error would): `started` counts the pieces that
    reached generation. The server must run in this process (`ServerThread`)."""

    def __init__(self, served: Served, wait: float = 120.0, fail: bool = False) -> None:
        self.pipe = served.app.state.service.pipelines["tts"]
        self.wait, self.fail = wait, fail
        self.event = threading.Event()
        self.started: list[str] = []
        self.finished: list[threading.Event] = []  # one per generation: set when it has ended

    def __enter__(self) -> Gate:
        real = self.pipe.generate

        def gated(jobs, decoding=None, on_chunk=None, cancelled=None):
            jobs = list(jobs)
            self.started.extend(j.text for j in jobs)
            ended = threading.Event()
            self.finished.append(ended)
            try:
                if len(self.started) > 1:
                    assert self.event.wait(self.wait)
                    if self.fail:
                        raise RuntimeError("the gate failed this piece")
                yield from real(jobs, decoding, on_chunk=on_chunk, cancelled=cancelled)
            finally:
                ended.set()

        self.pipe.generate = gated
        return self

    def open(self) -> None:
        self.event.set()

    def __exit__(self, *exc: object) -> None:
        self.event.set()
        del self.pipe.generate  # back to the class's method


@pytest.fixture(scope="session")
def served(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    from metis_cli.serve import Limits, ServeConfig
    from metis_cli.serve.app import create_app

    folder = tmp_path_factory.mktemp("serve")
    sf.write(folder / "alice.wav", speechlike(3.0, seed=5), 24_000)
    (folder / "voices.json").write_text(
        json.dumps({"alice": {"audio": "alice.wav", "text": VOICE_TEXT, "language": "en"}})
    )
    config = ServeConfig(
        tasks=("tts", "se", "vc", "tse"),
        max_batch=4,
        max_wait_ms=300.0,
        max_queue=32,
        request_timeout=120.0,
        api_key=API_KEY,
        voices_file=folder / "voices.json",
        limits=Limits(max_upload_mb=2.0, max_audio_seconds=30.0, max_text_chars=400, max_steps=50),
        load_options={"checkpoint_dir": tiny_bundle, "offline": True, "steps": 2, "s2a_steps": "2,2"},
    )
    app = create_app(config)
    thread = ServerThread(app, free_port())
    thread.start()
    yield Served(thread.url, API_KEY, folder, app, thread.server)
    thread.stop()

"""`metis serve` as a process (SIGTERM drains, exit 0; refusals) and client mode (`--server URL`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import soundfile as sf
from typer.testing import CliRunner

from metis_cli.cli import app
from tests.conftest import FAST
from tests.serve.conftest import free_port, wav_bytes


def _cli(args, env=None):
    return CliRunner().invoke(app, args, env=env, catch_exceptions=False)


def test_non_loopback_host_needs_a_key():
    r = _cli(["serve", "--host", "0.0.0.0", "--port", "1"])
    assert r.exit_code == 2
    assert "needs --api-key" in r.output and "--no-auth" in r.output
    r = _cli(["serve", "--tasks", "tts,l2s"])
    assert r.exit_code == 2 and "--tasks:" in r.output
    r = _cli(["serve", "--steps", "0"])
    assert r.exit_code == 2 and "--steps: must be >= 1 (got 0)" in r.output
    r = _cli(["serve", "--max-batch", "0"])
    assert r.exit_code == 2 and "--max-batch: must be >= 1" in r.output


@pytest.mark.slow  # a fresh process: torch import and model load (~15-35 s on the shared CI machine)
def test_sigterm_drains_in_flight_requests_and_exits_0(tiny_bundle, tmp_path):
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "metis_cli.cli", "serve", "--checkpoint-dir", str(tiny_bundle), "--offline",
         "--tasks", "se", "--port", str(port), "--max-wait-ms", "1500", *FAST],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "METIS_API_KEY": ""},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "the service did not get ready"
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        answers: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: answers.append(
                httpx.post(url + "/v1/enhance", files={"input": ("a.wav", wav_bytes(1.0))}, timeout=60)
            )
        )
        sender.start()
        time.sleep(0.6)  # the request waits in its batch window (1.5 s) when SIGTERM arrives
        proc.send_signal(signal.SIGTERM)
        sender.join(60)
        assert proc.wait(60) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert len(answers) == 1 and answers[0].status_code == 200, answers
    assert answers[0].headers["content-type"] == "audio/wav"
    text = (tmp_path / "serve.log").read_text()
    assert "se: batch of 1" in text and "POST /v1/enhance 200" in text


@pytest.mark.slow  # a fresh process: torch import and model load
def test_a_forced_stop_answers_503_and_exits_1(tiny_bundle, tmp_path):
    """SIGINT, then SIGINT again while a request waits: a JSON 503, never a 500, and exit 1."""
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "metis_cli.cli", "serve", "--checkpoint-dir", str(tiny_bundle), "--offline",
         "--tasks", "se", "--port", str(port), "--max-wait-ms", "20000", *FAST],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "METIS_API_KEY": ""},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    answers: list[httpx.Response] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "the service did not get ready"
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        sender = threading.Thread(
            target=lambda: answers.append(
                httpx.post(url + "/v1/enhance", files={"input": ("a.wav", wav_bytes(1.0))}, timeout=60)
            )
        )
        sender.start()
        deadline = time.monotonic() + 30
        while "queue_depth" not in (m := httpx.get(url + "/metrics", timeout=5).text) or (
            'metis_queue_depth{task="se"} 1.0' not in m
        ):
            assert time.monotonic() < deadline, "the request was not queued"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)  # uvicorn counts a second signal only after it handled the first
        proc.send_signal(signal.SIGINT)
        sender.join(60)
        assert proc.wait(60) == 1, (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in text and "second signal" in text
    assert len(answers) == 1 and answers[0].status_code == 503, answers
    assert answers[0].json()["error"]["code"] in ("shutting_down", "not_ready")


def test_client_mode_same_outputs_json_and_exit_codes(served, tiny_bundle, tmp_path):
    a = tmp_path / "a.wav"
    b = tmp_path / "b.wav"
    a.write_bytes(wav_bytes(1.5, seed=1))
    b.write_bytes(wav_bytes(1.0, 16_000, seed=2))
    env = {"METIS_API_KEY": served.key}
    local = tmp_path / "local.wav"
    r = _cli(
        [
            "enhance",
            str(a),
            "-o",
            str(local),
            "--checkpoint-dir",
            str(tiny_bundle),
            "--offline",
            *FAST,
            "--seed",
            "9",
        ]
    )
    assert r.exit_code == 0, r.output
    remote = tmp_path / "remote.wav"
    r = _cli(["enhance", str(a), "-o", str(remote), "--server", served.url, "--seed", "9", "--json"], env=env)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["status"] == "ok" and rep["seed"] == 9 and rep["output"] == str(remote) and rep["steps"] == 2
    assert rep["audio_seconds"] == 1.5 and rep["output_seconds"] > 0
    assert remote.read_bytes() == local.read_bytes()  # same seed, same file

    # many jobs, a missing input: the other jobs run, exit 1, one JSON line per job, in order
    out = tmp_path / "out"
    r = _cli(
        ["enhance", str(a), str(b), str(tmp_path / "missing.wav"), "-o", str(out), "--json", "--seed", "3"],
        env={**env, "METIS_SERVER": served.url},
    )
    assert r.exit_code == 1, r.output
    lines = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert [x["status"] for x in lines] == ["ok", "ok", "error"]
    assert lines[2]["error"] == f"{tmp_path / 'missing.wav'}: no such audio file"
    assert sf.info(out / "a.wav").samplerate == 24_000 and (out / "b.wav").exists()
    # existing outputs: the CLI's policy, before anything is sent
    r = _cli(["enhance", str(a), "-o", str(remote), "--server", served.url], env=env)
    assert r.exit_code == 1 and "exists (use --overwrite or --skip-existing)" in r.output

    # tts through the service, written in the format the extension names
    flac = tmp_path / "hi.flac"
    r = _cli(
        ["tts", "--prompt", str(a), "--prompt-text", "A prompt text.", "-t", "Hi there.", "-o", str(flac),
         "--server", served.url, "--seed", "4"],
        env=env,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(flac) and sf.info(flac).format == "FLAC"
    # a bad job answered by the service: its message names the local file
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all" * 10)
    r = _cli(["enhance", str(bad), "-o", str(tmp_path / "x.wav"), "--server", served.url], env=env)
    assert r.exit_code == 1 and f"failed: {bad}: unreadable or unsupported audio format" in r.output


def test_client_mode_errors(served, tmp_path):
    a = tmp_path / "a.wav"
    a.write_bytes(wav_bytes(1.0))
    r = _cli(["enhance", str(a), "--server", f"http://127.0.0.1:{free_port()}"])
    assert r.exit_code == 1 and "cannot reach the service" in r.output
    r = _cli(["enhance", str(a), "--server", served.url], env={"METIS_API_KEY": "wrong"})
    assert r.exit_code == 1 and "invalid API key" in r.output
    r = _cli(["enhance", str(a), "--server", "localhost:8000"])
    assert r.exit_code == 2 and "--server: must be an http:// or https:// URL" in r.output


@pytest.mark.parametrize("flag", ["--server"])
def test_server_flag_only_on_servable_commands(flag):
    for cmd in ("tts", "vc", "tse", "enhance"):
        assert flag in _cli([cmd, "--help"]).output
    assert flag not in _cli(["l2s", "--help"]).output

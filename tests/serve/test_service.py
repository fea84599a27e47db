"""The service over HTTP (httpx, the openai client) on the tiny bundle: every endpoint."""

from __future__ import annotations

import io
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import FAST
from tests.serve.conftest import VOICE_TEXT, wav_bytes

TEXT = "Hi there."


def _wav(content: bytes) -> tuple[np.ndarray, int]:
    data, sr = sf.read(io.BytesIO(content), dtype="int16")
    return data, sr


def _speech(served, **body) -> httpx.Response:
    body = {"model": "tts-1", "input": TEXT, "voice": "alice", "response_format": "wav", **body}
    return httpx.post(served.url + "/v1/audio/speech", json=body, headers=served.auth, timeout=120)


def test_health_ready_models_voices_metrics(served):
    assert httpx.get(served.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(served.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["tasks"] == {"tts": "ready", "se": "ready", "vc": "ready", "tse": "ready"}
    models = httpx.get(served.url + "/v1/models", headers=served.auth).json()
    assert {m["task"] for m in models["data"]} == {"tts", "se", "vc", "tse"}
    assert {m["id"] for m in models["data"]} >= {"maskgct-t2s", "metis-se-lora32"}
    voices = httpx.get(served.url + "/v1/voices", headers=served.auth).json()["data"]
    alice = next(v for v in voices if v["name"] == "alice")
    assert alice["source"] == "config" and alice["language"] == "en" and alice["seconds"] == 3.0
    assert re.fullmatch(r"v_[0-9a-f]{16}", alice["id"])  # opaque, not derived from the file name
    assert "alice.wav" not in str(voices) and VOICE_TEXT not in str(voices)
    metrics = httpx.get(served.url + "/metrics", headers=served.auth)
    assert metrics.status_code == 200
    for name in (
        "metis_requests_total",
        "metis_request_seconds_bucket",
        "metis_queue_depth",
        "metis_batch_size_bucket",
        "metis_model_load_seconds",
    ):
        assert name in metrics.text
    assert re.search(r'metis_model_load_seconds\{task="tts"\} [0-9.e-]+', metrics.text)
    page = httpx.get(served.url + "/")
    assert page.status_code == 200 and '<script src="/static/app.js">' in page.text
    assert "http" not in page.text.split("<body>")[1].replace("/static/app.js", "")  # no CDN
    assert httpx.get(served.url + "/static/app.js").status_code == 200


def test_speech_formats_and_headers(served):
    r = _speech(served, seed=11)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    assert r.headers["x-metis-seed"] == "11" and r.headers["x-metis-steps"] == "2"
    assert float(r.headers["x-metis-processing-seconds"]) > 0
    assert r.headers["x-request-id"]
    wav, sr = _wav(r.content)
    assert sr == 24_000 and wav.ndim == 1 and len(wav) > 0
    assert abs(len(wav) / sr - float(r.headers["x-metis-output-seconds"])) < 1e-3
    # the same seed again: the same samples, in every lossless format
    pcm = _speech(served, seed=11, response_format="pcm")
    assert pcm.status_code == 200 and pcm.headers["content-type"] == "audio/pcm"
    assert np.array_equal(np.frombuffer(pcm.content, "<i2"), wav)
    flac = _speech(served, seed=11, response_format="flac")
    assert flac.headers["content-type"] == "audio/flac"
    assert np.array_equal(_wav(flac.content)[0], wav)
    # another seed: other audio
    other = _speech(served, seed=12)
    assert not np.array_equal(_wav(other.content)[0][: len(wav)], wav[: len(_wav(other.content)[0])])
    from metis_cli.serve.media import decode_upload

    types = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac"}
    for fmt, ctype in types.items():  # on every installation (PyAV), decoded back with PyAV
        lossy = _speech(served, seed=11, response_format=fmt)
        assert lossy.status_code == 200, lossy.text
        assert lossy.headers["content-type"] == ctype
        back = decode_upload(lossy.content, fmt)
        assert back.sample_rate in (24_000, 48_000)
        assert abs(back.samples.shape[0] / back.sample_rate - len(wav) / sr) < 0.1
    # speed scales the length rule's duration; a duration sets it
    slow = _speech(served, seed=11, speed=0.5)
    assert slow.status_code == 200
    assert len(_wav(slow.content)[0]) > 1.5 * len(wav)
    fixed = _speech(served, seed=11, duration=1.5)
    assert abs(float(fixed.headers["x-metis-output-seconds"]) - 1.5) < 0.05


def test_openai_client(served):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=served.key, max_retries=0, timeout=120)
    reference = _speech(served, seed=5).content
    audio = client.audio.speech.create(
        model="tts-1", voice="alice", input=TEXT, response_format="wav", extra_body={"seed": 5}
    )
    assert audio.content == reference
    chunks = []
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alice", input=TEXT, response_format="wav", extra_body={"seed": 5}
    ) as response:
        assert response.headers["x-metis-seed"] == "5"
        for chunk in response.iter_bytes(4096):
            chunks.append(chunk)
    assert b"".join(chunks) == reference
    with pytest.raises(openai.NotFoundError) as err:
        client.audio.speech.create(model="tts-1", voice="nobody", input=TEXT)
    assert "no voice named 'nobody'" in str(err.value)
    bad = openai.OpenAI(base_url=served.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.audio.speech.create(model="tts-1", voice="alice", input=TEXT)


def test_same_seed_as_the_cli(served, tiny_bundle, tmp_path):
    from typer.testing import CliRunner

    from metis_cli.cli import app

    prompt = tmp_path / "prompt.wav"
    noisy = tmp_path / "noisy.wav"
    prompt.write_bytes(wav_bytes(3.0, seed=7))
    noisy.write_bytes(wav_bytes(2.0, 16_000, seed=8))
    common = ["--checkpoint-dir", str(tiny_bundle), "--offline", *FAST, "--seed", "21"]
    cli_tts = tmp_path / "cli_tts.wav"
    cli_se = tmp_path / "cli_se.wav"
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "tts",
            "--prompt",
            str(prompt),
            "--prompt-text",
            VOICE_TEXT,
            "-t",
            TEXT,
            "-o",
            str(cli_tts),
            *common,
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["enhance", str(noisy), "-o", str(cli_se), *common])
    assert r.exit_code == 0, r.output

    files = {"prompt": ("prompt.wav", prompt.read_bytes())}
    data = {"text": TEXT, "prompt_text": VOICE_TEXT, "seed": "21"}
    tts = httpx.post(served.url + "/v1/tts", data=data, files=files, headers=served.auth, timeout=120)
    assert tts.status_code == 200, tts.text
    assert np.array_equal(_wav(tts.content)[0], sf.read(cli_tts, dtype="int16")[0])
    se = httpx.post(
        served.url + "/v1/enhance",
        data={"seed": "21"},
        files={"input": ("noisy.wav", noisy.read_bytes())},
        headers=served.auth,
        timeout=120,
    )
    assert se.status_code == 200, se.text
    assert se.content == cli_se.read_bytes()  # byte for byte: the same WAV
    assert se.headers["x-metis-audio-seconds"] == "2.000"


def test_enhance_tse_vc_and_voice_prompts(served):
    mix, enrol = wav_bytes(2.0, seed=1), wav_bytes(3.0, seed=2)
    for route, files in (
        ("enhance", {"input": ("a.wav", mix)}),
        ("tse", {"mix": ("m.wav", mix), "enrol": ("e.wav", enrol)}),
        ("vc", {"source": ("s.wav", mix), "reference": ("r.wav", enrol)}),
    ):
        r = httpx.post(
            f"{served.url}/v1/{route}",
            data={"seed": "3", "steps": "3"},
            files=files,
            headers=served.auth,
            timeout=120,
        )
        assert r.status_code == 200, (route, r.text)
        assert r.headers["x-metis-seed"] == "3" and r.headers["x-metis-steps"] == "3"
        wav, sr = _wav(r.content)
        assert sr == 24_000 and abs(len(wav) / sr - 2.0) < 0.05
    # a registered voice as the VC reference and as the TTS prompt
    vc = httpx.post(
        served.url + "/v1/vc",
        data={"voice": "alice", "seed": "1"},
        files={"source": ("s.wav", mix)},
        headers=served.auth,
        timeout=120,
    )
    assert vc.status_code == 200, vc.text
    tts = httpx.post(
        served.url + "/v1/tts",
        data={"voice": "alice", "text": TEXT, "seed": "5"},
        headers=served.auth,
        timeout=120,
    )
    assert tts.status_code == 200, tts.text
    assert tts.content == _speech(served, seed=5).content


def test_upload_formats_decoded_in_memory(served):
    av = pytest.importorskip("av")
    buf = io.BytesIO()  # what a browser's MediaRecorder sends: WebM/Opus (PyAV decodes it)
    container = av.open(buf, "w", format="webm")
    stream = container.add_stream("libopus", rate=48_000)
    stream.layout = "mono"
    x = (np.sin(np.arange(96_000) / 9.0) * 0.3).astype(np.float32)[None, :]
    frame = av.AudioFrame.from_ndarray(x, format="flt", layout="mono")
    frame.sample_rate = 48_000
    for packet in [*stream.encode(frame), *stream.encode(None)]:
        container.mux(packet)
    container.close()
    flac = io.BytesIO()
    sf.write(
        flac, np.random.default_rng(0).standard_normal(32_000).astype(np.float32) * 0.1, 16_000, format="FLAC"
    )
    for name, data in (("rec.webm", buf.getvalue()), ("a.flac", flac.getvalue())):
        r = httpx.post(
            served.url + "/v1/enhance", files={"input": (name, data)}, headers=served.auth, timeout=120
        )
        assert r.status_code == 200, (name, r.text)
        assert abs(float(r.headers["x-metis-audio-seconds"]) - 2.0) < 0.05


def test_voice_upload_list_delete(served):
    files = {"audio": ("bob.wav", wav_bytes(3.0, seed=9))}
    r = httpx.post(
        served.url + "/v1/voices",
        data={"text": "Another prompt text.", "language": "en", "name": "bob"},
        files=files,
        headers=served.auth,
    )
    assert r.status_code == 201, r.text
    voice = r.json()
    assert re.fullmatch(r"v_[0-9a-f]{16}", voice["id"]) and voice["name"] == "bob"
    listed = httpx.get(served.url + "/v1/voices", headers=served.auth).json()["data"]
    assert voice["id"] in [v["id"] for v in listed]
    assert httpx.get(f"{served.url}/v1/voices/{voice['id']}", headers=served.auth).json()["name"] == "bob"
    for key in (voice["id"], "bob"):
        s = _speech(served, voice=key, seed=2)
        assert s.status_code == 200, s.text
    dup = httpx.post(
        served.url + "/v1/voices", data={"text": "Text.", "name": "bob"}, files=files, headers=served.auth
    )
    assert dup.status_code == 409
    d = httpx.delete(f"{served.url}/v1/voices/{voice['id']}", headers=served.auth)
    assert d.status_code == 200 and d.json()["deleted"] is True
    assert httpx.delete(f"{served.url}/v1/voices/{voice['id']}", headers=served.auth).status_code == 404
    assert _speech(served, voice="bob").status_code == 404
    alice = next(v for v in listed if v["name"] == "alice")
    assert httpx.delete(f"{served.url}/v1/voices/{alice['id']}", headers=served.auth).status_code == 403


def test_sixteen_parallel_requests_are_batched(served):
    def before() -> float:
        text = httpx.get(served.url + "/metrics", headers=served.auth).text
        return _batches_over_one(text)

    n0 = before()
    with ThreadPoolExecutor(16) as pool:
        responses = list(
            pool.map(lambda i: _speech(served, seed=100 + i, input=f"Hi number {i}."), range(16))
        )
    assert [r.status_code for r in responses] == [200] * 16, [
        r.text for r in responses if r.status_code != 200
    ]
    assert [r.headers["x-metis-seed"] for r in responses] == [str(100 + i) for i in range(16)]
    assert max(int(r.headers["x-metis-batch-size"]) for r in responses) > 1
    assert before() > n0  # /metrics counts batches of more than one job
    assert httpx.get(served.url + "/readyz").status_code == 200


def _batches_over_one(metrics: str) -> float:
    count = re.search(r'metis_batch_size_count\{task="tts"\} ([0-9.e+]+)', metrics)
    ones = re.search(r'metis_batch_size_bucket\{le="1.0",task="tts"\} ([0-9.e+]+)', metrics)
    return float(count.group(1)) - float(ones.group(1)) if count and ones else 0.0


def test_one_bad_job_in_a_batch_fails_alone(served):
    """Four enhancement requests in one batch window; one input is too short for a frame."""
    good = wav_bytes(2.0, seed=4)
    tiny = wav_bytes(0.004, seed=4)  # decodes fine, fails inside the engine

    def send(data: bytes) -> httpx.Response:
        return httpx.post(
            served.url + "/v1/enhance", files={"input": ("x.wav", data)}, headers=served.auth, timeout=120
        )

    with ThreadPoolExecutor(4) as pool:
        rs = list(pool.map(send, [good, tiny, good, good]))
    assert [r.status_code for r in rs] == [200, 422, 200, 200], [r.text for r in rs]
    msg = rs[1].json()["error"]["message"]
    assert msg.startswith("input:") and "\n" not in msg


def test_long_upload_takes_the_longform_path(served):
    """24 s (over the 20 s chunk length): chunked, joined, the input's length exactly."""
    r = httpx.post(
        served.url + "/v1/enhance",
        data={"seed": "2"},
        files={"input": ("long.wav", wav_bytes(24.0, 16_000, seed=6))},
        headers=served.auth,
        timeout=300,
    )
    assert r.status_code == 200, r.text
    assert int(r.headers["x-metis-chunks"]) >= 2
    wav, sr = _wav(r.content)
    assert len(wav) == 24 * sr


def test_http_conventions_on_the_real_server(served):
    head = httpx.head(served.url + "/healthz")
    assert head.status_code == 200 and head.content == b""
    assert httpx.get(served.url + "/docs").status_code == 200  # public, like /openapi.json
    doc = httpx.get(served.url + "/openapi.json").json()
    assert all("requestBody" in ops["post"] for ops in doc["paths"].values() if "post" in ops)
    listing = httpx.get(served.url + "/v1/audio/voices", headers=served.auth).json()
    assert "alice" in listing["voices"]
    model = httpx.get(served.url + "/v1/models", headers=served.auth).json()["data"][0]
    one = httpx.get(f"{served.url}/v1/models/{model['id']}", headers=served.auth)
    assert one.status_code == 200 and one.json() == model
    r = _speech(served, voice={"id": "alice"}, instructions="Calm and slow.", seed=3)
    assert r.status_code == 200, r.text

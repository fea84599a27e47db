"""Streamed answers over HTTP (`stream_format` "audio" and "sse") and speaker prompts encoded once,
on a real uvicorn server with the tiny bundle (issue 22)."""

from __future__ import annotations

import base64
import io
import json
import re
import threading

import av
import httpx
import numpy as np
import pytest
import soundfile as sf

from metis_cli.text import sentences
from tests.conftest import speechlike
from tests.serve.conftest import STREAM_TEXT, STREAM_WAIT, VOICE_TEXT, Gate, stream_server, wav_bytes

TEXT = STREAM_TEXT
SIX = TEXT + " Then a fourth one comes along. A fifth sentence is spoken here. And the sixth closes it all."
WAIT = STREAM_WAIT


@pytest.fixture(scope="module")
def streamed(tiny_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    (folder / "dir").mkdir()
    served, thread = stream_server(
        tiny_bundle, folder, ("tts", "se"), voices_dir=folder / "dir", max_upload_mb=4.0,
        chunk_seconds=5.0, overlap_seconds=0.5, context_seconds=1.0,
    )  # fmt: skip
    yield served
    thread.stop()


def _body(**kw) -> dict:
    return {"model": "tts-1", "input": TEXT, "voice": "alice", "response_format": "pcm", "seed": 3, **kw}


def _post(served, **kw) -> httpx.Response:
    return httpx.post(served.url + "/v1/audio/speech", json=_body(**kw), headers=served.auth, timeout=WAIT)


def _sse_events(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def test_audio_stream_equals_the_long_text_path_and_starts_before_the_last_sentence(streamed):
    pieces = sentences.stream_pieces(TEXT, 40)
    assert pieces == sentences.split_text(TEXT, 40) and len(pieces) == 3
    whole = _post(streamed)  # not streamed: the long-text path, piece by piece
    assert whole.status_code == 200 and whole.headers["x-metis-chunks"] == "3"
    with Gate(streamed) as gate:
        with httpx.stream(
            "POST", streamed.url + "/v1/audio/speech", json=_body(stream_format="audio"),
            headers=streamed.auth, timeout=WAIT,
        ) as r:  # fmt: skip
            assert r.status_code == 200 and r.headers["content-type"] == "audio/pcm"
            assert r.headers["x-metis-seed"] == "3" and r.headers["x-metis-chunks"] == "3"
            assert "content-length" not in r.headers  # chunked transfer
            chunks = r.iter_bytes()
            first = next(chunks)
            # the first audio is here while the last sentence has not even started
            assert first and pieces[-1] not in gate.started
            gate.open()
            data = first + b"".join(chunks)
    assert data == whole.content


def test_sse_carries_the_same_samples_and_the_usage(streamed):
    audio = _post(streamed, stream_format="audio", seed=4)
    assert audio.status_code == 200
    r = _post(streamed, stream_format="sse", seed=4)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse_events(r.text)
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) >= 3 and events[-1]["type"] == "speech.audio.done"
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    pcm = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert pcm == audio.content
    usage = events[-1]["usage"]
    assert usage["input_characters"] == len(TEXT)
    assert usage["output_seconds"] == round(len(pcm) / 2 / 24_000, 3)


def test_a_one_sentence_stream_equals_the_whole_file(streamed):
    whole = _post(streamed, input="Hi there.", response_format="wav", seed=8)
    r = _post(streamed, input="Hi there.", response_format="wav", seed=8, stream_format="audio")
    assert r.status_code == 200
    a, _ = sf.read(io.BytesIO(whole.content), dtype="int16")
    b, rate = sf.read(io.BytesIO(r.content), dtype="int16")  # the unknown-length header is read to the end
    assert rate == 24_000 and np.array_equal(a, b)


@pytest.mark.parametrize("fmt", ["pcm", "wav", "mp3", "opus", "aac"])
def test_every_streamed_format_decodes_back(streamed, fmt):
    ref = np.frombuffer(_post(streamed, stream_format="audio", seed=6).content, "<i2")
    r = _post(streamed, stream_format="audio", seed=6, response_format=fmt)
    assert r.status_code == 200, r.text
    if fmt in ("pcm", "wav"):
        got = (
            np.frombuffer(r.content, "<i2")
            if fmt == "pcm"
            else sf.read(io.BytesIO(r.content), dtype="int16")[0]
        )
        assert np.array_equal(got, ref)
        return
    with av.open(io.BytesIO(r.content)) as container:
        rate = container.streams.audio[0].rate
        n = sum(f.samples for f in container.decode(audio=0))
    want = len(ref) * rate / 24_000
    assert want <= n <= want + 0.25 * rate  # the encoders' padding only


def test_the_openai_client_streams_both_formats(streamed):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=streamed.url + "/v1", api_key=streamed.key, max_retries=0, timeout=WAIT)
    ref = _post(streamed, stream_format="audio", seed=9).content
    kw = dict(model="tts-1", voice="alice", input=TEXT, response_format="pcm", extra_body={"seed": 9})
    with client.audio.speech.with_streaming_response.create(stream_format="audio", **kw) as response:
        assert response.headers["x-metis-seed"] == "9"
        got = b"".join(response.iter_bytes(1024))
    assert got == ref
    with client.audio.speech.with_streaming_response.create(stream_format="sse", **kw) as response:
        events = _sse_events(response.read().decode())
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert pcm == ref


def test_a_client_that_leaves_stops_the_remaining_pieces(streamed):
    service = streamed.app.state.service
    ended: dict[str, str] = {}
    done = threading.Event()
    service.on_stream_end = lambda rid, outcome: (ended.update({rid: outcome}), done.set())
    pieces = sentences.stream_pieces(SIX, 40)
    assert len(pieces) == 6
    try:
        with Gate(streamed) as gate:
            headers = {**streamed.auth, "X-Request-Id": "leaver"}
            with httpx.stream(
                "POST", streamed.url + "/v1/audio/speech", json=_body(input=SIX, stream_format="audio"),
                headers=headers, timeout=WAIT,
            ) as r:  # fmt: skip
                assert r.status_code == 200
                assert next(r.iter_bytes())
            # the client has gone; the second piece is dropped in the queue or held at the gate
            assert done.wait(WAIT) and ended["leaver"] == "disconnected"
            gate.open()
            # the piece in flight (if it had reached the worker at all) has ended
            assert all(finished.wait(WAIT) for finished in list(gate.finished))
            assert _post(streamed, input="Hi there.").status_code == 200  # the service goes on
            assert not set(pieces[2:]) & set(gate.started)  # and no later piece was queued
    finally:
        service.on_stream_end = None
    metrics = httpx.get(streamed.url + "/metrics", headers=streamed.auth).text
    assert re.search(r'metis_streams_total\{outcome="disconnected",task="tts"\} [1-9]', metrics)


def test_long_enhancement_streams_chunk_by_chunk(streamed, tmp_path):
    audio = wav_bytes(12.0, 16_000, seed=2)

    def enhance(**fields):
        return httpx.post(
            streamed.url + "/v1/enhance", data={"seed": "5", "response_format": "pcm", **fields},
            files={"input": ("long.wav", audio)}, headers=streamed.auth, timeout=WAIT,
        )  # fmt: skip

    whole = enhance()
    assert whole.status_code == 200 and int(whole.headers["x-metis-chunks"]) >= 3
    streamed_pcm = enhance(stream_format="audio")
    assert streamed_pcm.status_code == 200 and streamed_pcm.content == whole.content
    sse = enhance(stream_format="sse")
    events = _sse_events(sse.text)
    assert sum(e["type"] == "speech.audio.delta" for e in events) >= 3
    assert events[-1]["usage"]["input_seconds"] == 12.0
    bad = enhance(stream_format="sse", response_format="flac")
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "response_format"


def _cache_counts(served) -> dict[str, float]:
    text = httpx.get(served.url + "/metrics", headers=served.auth).text
    return {
        e: float(re.search(rf'metis_prompt_cache_total\{{event="{e}"\}} ([0-9.]+)', text)[1])
        for e in ("hit", "miss")
    }


def test_uploaded_prompts_are_encoded_once_and_exactly(streamed, tiny_bundle, tmp_path):
    from metis_cli import api

    prompt = tmp_path / "prompt.wav"
    sf.write(prompt, speechlike(3.0, seed=21), 24_000)
    before = _cache_counts(streamed)

    def tts():
        return httpx.post(
            streamed.url + "/v1/tts",
            data={"text": "Hi there.", "prompt_text": VOICE_TEXT, "language": "en", "prompt_language": "en",
                  "seed": "2", "response_format": "pcm"},
            files={"prompt": ("p.wav", prompt.read_bytes())}, headers=streamed.auth, timeout=WAIT,
        )  # fmt: skip

    first, second = tts(), tts()
    assert first.status_code == second.status_code == 200
    after = _cache_counts(streamed)
    assert after["miss"] - before["miss"] == 1 and after["hit"] - before["hit"] == 1
    assert first.content == second.content
    # and both equal a run without any cache
    pipe = api.load("tts", checkpoint_dir=tiny_bundle, offline=True, steps=2, s2a_steps="2,2")
    pipe.prompt_cache = None
    ref = pipe(prompt, text="Hi there.", prompt_text=VOICE_TEXT, language="en", prompt_language="en", seed=2)
    from metis_cli.media.encode import pcm16

    assert np.array_equal(np.frombuffer(first.content, "<i2"), pcm16(ref.wav))


def test_a_registered_voice_is_encoded_once_and_persisted(streamed):
    before = _cache_counts(streamed)
    a = _post(streamed, input="Hi there.", seed=1)
    b = _post(streamed, input="Hi there.", seed=1)
    assert a.status_code == b.status_code == 200 and a.content == b.content
    after = _cache_counts(streamed)
    assert after["miss"] - before["miss"] <= 1 and after["hit"] - before["hit"] >= 1
    files = list((streamed.folder / "dir").glob("*.safetensors"))
    assert len(files) == 1
    assert re.fullmatch(r"[0-9a-f]{64}\.[\w.-]+-float32-cpu-[0-9a-f]{8}\.safetensors", files[0].name)

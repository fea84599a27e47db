"""A corpus of bad requests: each gets its status and a one-line message; the server stays healthy."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.serve.conftest import wav_bytes

GOOD_SPEECH = {"model": "tts-1", "input": "Hi there.", "voice": "alice", "response_format": "wav"}


def _speech(**changes):
    body = {**GOOD_SPEECH, **changes}
    return {
        "method": "POST",
        "path": "/v1/audio/speech",
        "json": {k: v for k, v in body.items() if v is not ...},
    }


def _enhance(data: bytes, name: str = "x.wav", **fields):
    return {"method": "POST", "path": "/v1/enhance", "files": {"input": (name, data)}, "data": fields}


# (id, request, status, param, words in the message)
CASES = [
    ("corrupt upload", _enhance(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 20), 422, "input", "input:"),
    ("empty upload", _enhance(b""), 422, "input", "empty upload"),
    ("oversized upload", _enhance(b"\0" * (3 * 1024 * 1024)), 413, None, "at most"),
    ("text file as audio", _enhance(b"just some words\n" * 50, "notes.txt"), 422, "input", "unsupported"),
    ("audio too long", _enhance(wav_bytes(31.0, 8_000)), 413, "input", "31.0 s of audio"),
    ("wrong response format", _speech(response_format="ogg"), 422, "response_format", "must be one of"),
    (
        "wrong format on multipart",
        _enhance(wav_bytes(1.0), response_format="ogg-vorbis"),
        422,
        "response_format",
        "must be one of",
    ),
    ("empty text", _speech(input=""), 422, "input", "input is empty"),
    ("text without letters", _speech(input="!!! ???"), 422, "input", "no letters"),
    ("huge text", _speech(input="word " * 200), 413, "input", "characters long"),
    ("unknown voice", _speech(voice="nobody"), 404, "voice", "no voice named 'nobody'"),
    ("path-like voice", _speech(voice="../../etc/passwd"), 404, "voice", "no voice named"),
    ("absolute path voice", _speech(voice="/etc/passwd"), 404, "voice", "no voice named"),
    ("unknown model", _speech(model="gpt-5-voice"), 404, "model", "no model 'gpt-5-voice'"),
    (
        "unknown task",
        {"method": "POST", "path": "/v1/l2s", "data": {"x": "1"}},
        404,
        None,
        "no such endpoint",
    ),
    (
        "bad JSON",
        {
            "method": "POST",
            "path": "/v1/audio/speech",
            "content": b"{not json",
            "headers": {"content-type": "application/json"},
        },
        400,
        None,
        "not valid JSON",
    ),
    (
        "JSON not an object",
        {"method": "POST", "path": "/v1/audio/speech", "json": ["a"]},
        400,
        None,
        "JSON object",
    ),
    ("missing field", _speech(input=...), 422, "input", "missing field(s): input"),
    ("unknown field", _speech(stepz=3), 422, "stepz", "unknown field(s): stepz"),
    ("negative steps", _speech(steps=-1), 422, "steps", "steps: must be >= 1 (got -1)"),
    ("steps not an integer", _speech(steps=2.0), 422, "steps", "steps: must be an integer (got 2.0)"),
    ("model not a string", _speech(model=1), 422, "model", "model: must be a string"),
    ("voice as an object without id", _speech(voice={"name": "alice"}), 422, "voice", None),
    ("unknown voice as an object", _speech(voice={"id": "nobody"}), 404, "voice", "no voice named 'nobody'"),
    (
        "JSON nested 100000 deep",
        {
            "method": "POST",
            "path": "/v1/audio/speech",
            "content": b"[" * 100_000 + b"]" * 100_000,
            "headers": {"content-type": "application/json"},
        },
        400,
        None,
        "nested too deeply",
    ),
    (
        "an integer of 5000 digits",
        {
            "method": "POST",
            "path": "/v1/audio/speech",
            "content": b'{"seed": ' + b"7" * 5000 + b"}",
            "headers": {"content-type": "application/json"},
        },
        400,
        None,
        "not valid JSON",
    ),
    ("steps over the server's limit", _speech(steps=51), 422, "steps", "must be <= 50 on this server"),
    ("steps not a number", _enhance(wav_bytes(1.0), steps="many"), 422, "steps", "must be an integer"),
    ("bad s2a steps", _speech(s2a_steps="1,2,3"), 422, "s2a_steps", "must be N or A,B"),
    ("negative cfg", _speech(cfg=-1), 422, "cfg", "cfg: must be >= 0"),
    ("seed out of range", _speech(seed=2**64), 422, "seed", "0..2**63-1"),
    ("speed out of range", _speech(speed=10), 422, "speed", "0.25-4.0"),
    ("bad language", _speech(language="xx"), 422, "language", "must be one of"),
    ("huge duration", _speech(duration=100000), 422, "duration", "must be within"),
    (
        "missing file field",
        {"method": "POST", "path": "/v1/vc", "files": {"source": ("s.wav", wav_bytes(1.0))}},
        422,
        "reference",
        "missing file field: reference",
    ),
    (
        "JSON to a multipart endpoint",
        {"method": "POST", "path": "/v1/enhance", "json": {"input": "x.wav"}},
        415,
        None,
        "multipart/form-data",
    ),
    (
        "path as the audio field",
        {"method": "POST", "path": "/v1/enhance", "data": {"input": "/etc/passwd"}},
        422,
        "input",
        "must be an uploaded audio file",
    ),
    (
        "path-like voice id",
        {"method": "DELETE", "path": "/v1/voices/..%2F..%2Fetc%2Fpasswd"},
        404,
        None,
        None,
    ),
    ("missing API key", {**_speech(), "auth": None}, 401, None, "missing API key"),
    ("wrong API key", {**_speech(), "auth": "Bearer nope"}, 401, None, "invalid API key"),
    ("wrong method", {"method": "GET", "path": "/v1/audio/speech"}, 405, None, "not allowed"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request(served, case):
    _, req, status, param, words = case
    req = dict(req)
    method, path = req.pop("method"), req.pop("path")
    headers = dict(req.pop("headers", {}))
    auth = req.pop("auth", "default")
    if auth == "default":
        headers.update(served.auth)
    elif auth is not None:
        headers["Authorization"] = auth
    r = httpx.request(method, served.url + path, headers=headers, timeout=60, **req)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and "\n" not in err["message"] and "Traceback" not in err["message"]
    assert len(err["message"]) < 300
    if param is not None:
        assert err["param"] == param
    if words is not None:
        assert words in err["message"], err["message"]
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"


def test_server_healthy_after_the_corpus(served):
    assert len(CASES) >= 15
    assert httpx.get(served.url + "/healthz").status_code == 200
    assert httpx.get(served.url + "/readyz").status_code == 200
    r = httpx.post(served.url + "/v1/audio/speech", json=GOOD_SPEECH, headers=served.auth, timeout=60)
    assert r.status_code == 200, r.text
    metrics = httpx.get(served.url + "/metrics", headers=served.auth).text
    assert 'metis_requests_total{endpoint="/v1/audio/speech",status="422"}' in metrics
    assert 'metis_requests_total{endpoint="other",status="404"}' in metrics
    assert 'status="500"' not in metrics  # every bad request above is the client's error


def test_no_temp_files_and_no_bodies_in_logs(served, caplog, tmp_path, monkeypatch):
    """Uploads are decoded in memory (never rolled over to a file); the log has request ids,
    never texts or file names."""
    import logging
    import tempfile

    rollovers = []
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a spooled file would go
    original = tempfile.SpooledTemporaryFile.rollover
    monkeypatch.setattr(
        tempfile.SpooledTemporaryFile, "rollover", lambda self: rollovers.append(1) or original(self)
    )
    secret_text = "Purple elephants dance quietly."
    with caplog.at_level(logging.INFO, logger="metis.serve"):
        big = wav_bytes(25.0, 24_000)  # 1.2 MB: over Starlette's default in-memory spool size
        r = httpx.post(
            served.url + "/v1/enhance", files={"input": ("big.wav", big)}, headers=served.auth, timeout=120
        )
        assert r.status_code == 200, r.text
        assert list(tmp_path.iterdir()) == []
        body = {**GOOD_SPEECH, "input": secret_text}
        assert (
            httpx.post(
                served.url + "/v1/audio/speech", json=body, headers=served.auth, timeout=60
            ).status_code
            == 200
        )
    assert rollovers == []
    text = caplog.text
    assert r.headers["x-request-id"] in text
    assert secret_text not in text and "big.wav" not in text
    assert json.dumps(secret_text) not in text


@pytest.mark.parametrize("text", ["2024", "$5", "50%", "\x1b[31mHi there.\x1b[0m"])
def test_digit_only_and_coloured_texts_are_spoken(served, text):
    """Digits are speech once normalised (not a 422); control sequences are stripped first."""
    body = {**GOOD_SPEECH, "input": text}
    r = httpx.post(served.url + "/v1/audio/speech", json=body, headers=served.auth, timeout=120)
    assert r.status_code == 200, r.text
    assert r.content[:4] == b"RIFF"

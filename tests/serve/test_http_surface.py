"""The HTTP surface with stand-in pipelines (FastAPI's TestClient, fast): the OpenAPI document,
typed requests (strict JSON, unknown fields, voice objects), CORS, HEAD /healthz, models and
voices listings, voice ids and names, malformed bodies answered 4xx, text front-end checks."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from tests.conftest import speechlike
from tests.serve.conftest import VOICE_TEXT, wav_bytes
from tests.serve.fakes import FakeEngine, FakePipeline

KEY = "k-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
ORIGIN = "https://page.example"
SPEECH = {"model": "tts-1", "input": "Hello there.", "voice": "alice", "response_format": "wav"}


def _voices_file(folder):
    sf.write(folder / "alice.wav", speechlike(3.0, seed=5), 24_000)
    path = folder / "voices.json"
    path.write_text(json.dumps({"alice": {"audio": "alice.wav", "text": VOICE_TEXT, "language": "en"}}))
    return path


def _app(folder, **config):
    from metis_cli.serve import Limits, ServeConfig
    from metis_cli.serve.app import create_app

    cfg = ServeConfig(
        **{
            "tasks": ("tts", "se"),
            "max_batch": 2,
            "max_wait_ms": 0.0,
            "api_key": KEY,
            "voices_file": _voices_file(folder),
            "cors_origins": ORIGIN,
            "limits": Limits(max_upload_mb=1.0, max_steps=50),
            **config,
        }
    )
    pipes = {t: FakePipeline(FakeEngine(0.0, 2, t), t) for t in ("tts", "se")}
    return create_app(cfg, pipes)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with TestClient(_app(tmp_path_factory.mktemp("surface"))) as c:
        yield c


def _error(r, status: int, param: str | None = None) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert "\n" not in err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err["message"]


def test_openapi_documents_every_request_body_and_its_errors(client):
    assert client.get("/docs").status_code == 200 and client.get("/redoc").status_code == 200
    doc = client.get("/openapi.json").json()  # public, like /docs
    posts = {path: ops["post"] for path, ops in doc["paths"].items() if "post" in ops}
    assert set(posts) == {"/v1/audio/speech", "/v1/enhance", "/v1/tse", "/v1/vc", "/v1/tts", "/v1/voices"}
    for path, op in posts.items():
        content = op["requestBody"]["content"]
        (kind,) = content
        props = content[kind]["schema"]["properties"]
        assert {"400", "401", "413", "422"} <= set(op["responses"]), path
        err = op["responses"]["422"]["content"]["application/json"]["schema"]
        assert err == {"$ref": "#/components/schemas/ErrorBody"}
        if path == "/v1/audio/speech":
            assert kind == "application/json"
            assert set(props) >= {"model", "input", "voice", "response_format", "speed", "instructions",
                                  "stream_format", "seed", "language", "duration", "steps", "cfg",
                                  "temperature", "s2a_steps", "s2a_temperature"}  # fmt: skip
            assert props["response_format"]["enum"] == ["mp3", "opus", "aac", "flac", "wav", "pcm"]
            steps = next(s for s in props["steps"]["anyOf"] if s["type"] == "integer")
            assert steps["minimum"] == 1 and steps["maximum"] == 1000  # options.DecodingOptions.steps
            assert "ignored" in props["instructions"]["description"]
            assert {"model", "input", "voice"} <= set(content[kind]["schema"]["required"])
            assert "audio/aac" in op["responses"]["200"]["content"]
        else:
            assert kind == "multipart/form-data"
            files = {n for n, p in props.items() if p.get("format") == "binary"}
            assert files, path
            assert {"steps", "seed", "response_format"} <= set(props) or path == "/v1/voices"
    from metis_cli.core.tasks import TASKS
    from metis_cli.serve.routers.tasks import ROUTES

    for name, route in ROUTES.items():  # the documented file fields are the task's inputs
        assert tuple(route.files) == TASKS[route.task].inputs, name


@pytest.mark.parametrize(
    "change, param, words",
    [
        ({"steps": 2.0}, "steps", "must be an integer (got 2.0)"),
        ({"steps": "2"}, "steps", "must be an integer"),
        ({"model": 1}, "model", "must be a string"),
        ({"voice": 7}, "voice", 'a voice name or id, or {"id": ...}'),
        ({"voice": {"name": "alice"}}, "voice", None),
        ({"stepz": 3, "foo": 1}, "stepz", "unknown field(s): stepz, foo"),
        ({"cfg": -1}, "cfg", "cfg: must be >= 0 (got -1)"),
        ({"steps": 0}, "steps", "steps: must be >= 1 (got 0)"),
        ({"seed": -1}, "seed", "0..2**63-1"),
        ({"s2a_steps": 5}, "s2a_steps", "must be a string"),
        ({"response_format": "ogg"}, "response_format", "mp3, opus, aac, flac, wav, pcm"),
        ({"stream_format": "bytes"}, "stream_format", "must be one of"),
    ],
)
def test_strict_json_fields_are_422_naming_the_field(client, change, param, words):
    msg = _error(client.post("/v1/audio/speech", json={**SPEECH, **change}, headers=AUTH), 422, param)
    assert "--" not in msg  # HTTP field names, never CLI flags
    if words is not None:
        assert words in msg


def test_voice_object_instructions_and_the_model_listing(client):
    r = client.post(
        "/v1/audio/speech",
        json={**SPEECH, "voice": {"id": "alice"}, "instructions": "Speak warmly."},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    models = client.get("/v1/models", headers=AUTH).json()["data"]
    assert {m["id"] for m in models} == {"fake-tts", "fake-se"}
    assert client.get("/v1/models/fake-se", headers=AUTH).json()["task"] == "se"
    _error(client.get("/v1/models/nope", headers=AUTH), 404, "model_id")


def test_form_fields_typed_and_unknown_ones_named(client):
    files = {"input": ("a.wav", wav_bytes(0.5, 16_000))}
    ok = client.post("/v1/enhance", data={"steps": "3", "seed": "4"}, files=files, headers=AUTH)
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-metis-steps"] == "3" and ok.headers["x-metis-seed"] == "4"
    _error(client.post("/v1/enhance", data={"voice": "alice"}, files=files, headers=AUTH), 422, "voice")
    msg = _error(client.post("/v1/enhance", data={"steps": "x"}, files=files, headers=AUTH), 422, "steps")
    assert "must be an integer" in msg
    msg = _error(client.post("/v1/enhance", data={"steps": "51"}, files=files, headers=AUTH), 422, "steps")
    assert "<= 50 on this server" in msg


@pytest.mark.parametrize(
    "body, words",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"seed": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b'{"input": "\xff"}', "not UTF-8"),
        (b"[1, 2]", "JSON object"),
    ],
)
def test_malformed_json_is_400_not_500(client, body, words):
    r = client.post("/v1/audio/speech", content=body, headers={**AUTH, "content-type": "application/json"})
    assert words in _error(r, 400)


def test_healthz_head_and_cors(client):
    head = client.head("/healthz")
    assert head.status_code == 200 and head.content == b""
    preflight = client.options(
        "/v1/audio/speech",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"},
    )  # fmt: skip
    assert preflight.status_code == 200, preflight.text  # no API key needed for a preflight
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    other = client.options(
        "/v1/audio/speech",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    r = client.post("/v1/audio/speech", json=SPEECH, headers={**AUTH, "Origin": ORIGIN})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-metis-seed" in r.headers["access-control-expose-headers"].lower()
    denied = client.post("/v1/audio/speech", json=SPEECH, headers={"Origin": ORIGIN})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == ORIGIN


def test_no_cors_unless_configured(tmp_path):
    with TestClient(_app(tmp_path, cors_origins=None)) as c:
        r = c.options("/v1/audio/speech", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in r.headers


def test_audio_voices_listing_and_voice_names(client):
    listing = client.get("/v1/audio/voices", headers=AUTH).json()
    assert "alice" in listing["voices"] and listing["uploaded_voices"] == []
    alice = client.get("/v1/voices/alice", headers=AUTH).json()

    def upload(name, seconds=3.0):
        files = {"audio": ("v.wav", wav_bytes(seconds, 8_000, seed=3))}
        return client.post(
            "/v1/voices", data={"text": "Some words.", "name": name}, files=files, headers=AUTH
        )

    _error(upload(alice["id"]), 409, "name")  # another voice's id
    _error(upload("v_0123456789abcdef"), 409, "name")  # shaped like an id
    assert "30 s" in _error(upload("long", 31.0), 413, "audio")  # --max-voice-seconds
    short = upload("short", 1.0)
    assert short.status_code == 201 and "under 3 s" in short.json()["warnings"][0]
    listing = client.get("/v1/audio/voices", headers=AUTH).json()
    assert [v["name"] for v in listing["uploaded_voices"]] == ["short"]
    gone = client.delete("/v1/voices/short", headers=AUTH)  # by name, like GET
    assert gone.status_code == 200 and gone.json()["id"] == short.json()["id"]
    _error(client.delete("/v1/voices/short", headers=AUTH), 404, "voice_id")
    _error(client.delete("/v1/voices/alice", headers=AUTH), 403, "voice_id")


def test_voices_file_ids_are_stable_across_instances(tmp_path):
    ids = []
    for _ in range(2):
        with TestClient(_app(tmp_path)) as c:
            ids.append(c.get("/v1/voices/alice", headers=AUTH).json()["id"])
    assert ids[0] == ids[1]
    with TestClient(_app(tmp_path)) as c:
        assert c.post("/v1/audio/speech", json={**SPEECH, "voice": ids[0]}, headers=AUTH).status_code == 200
    (tmp_path / "voices.json").write_text(
        json.dumps({"alice": {"audio": "alice.wav", "text": "Other words.", "language": "en"}})
    )
    from metis_cli.serve.voices import VoiceStore

    store = VoiceStore()
    store.load_file(tmp_path / "voices.json")
    assert store.get("alice").id != ids[0]  # other content, another id


def test_duration_bounded_per_sentence_piece(client):
    r = client.post("/v1/audio/speech", json={**SPEECH, "duration": 31}, headers=AUTH)
    msg = _error(r, 422, "duration")
    assert "<= 30 s" in msg
    long_text = "A sentence of some length here. " * 20  # 640 characters: three pieces of <= 300
    r = client.post("/v1/audio/speech", json={**SPEECH, "input": long_text, "duration": 60}, headers=AUTH)
    assert r.status_code == 200, r.text


def test_a_missing_text_front_end_is_503_naming_the_download(client):
    from metis_cli import api

    service = client.app.state.service
    saved = dict(service.frontend_problems)
    service.frontend_problems["ja"] = "ja: the text front end's resources are not installed here: run " \
        "`metis download ja-frontend`"  # fmt: skip
    try:
        japanese = {**SPEECH, "input": "こんにちは、元気ですか。"}
        r = client.post("/v1/audio/speech", json=japanese, headers=AUTH)
        assert "metis download ja-frontend" in _error(r, 503)
        ok = client.post("/v1/audio/speech", json=SPEECH, headers=AUTH)
        assert ok.status_code == 200
    finally:
        service.frontend_problems.clear()
        service.frontend_problems.update(saved)
    assert api.needs_frontend("Hello 你好") == {"zh"} and api.needs_frontend("Hello there.") == set()
    for lang in ("zh", "ja"):
        problem = api.text_frontend_problem(lang)
        assert problem is None or f"metis download {lang}-frontend" in problem or f"[{lang}]" in problem


def test_retry_after_is_the_waiting_queue_not_one_long_batch():
    import threading

    from metis_cli.serve.batcher import Batcher
    from metis_cli.serve.metrics import Metrics

    b = Batcher(
        "se", None, max_batch=2, max_wait_ms=0, max_queue=8, metrics=Metrics(2), device_lock=threading.Lock()
    )
    assert b.retry_after() == 1  # nothing measured, nothing waiting
    b._recent.extend([0.5] * 10 + [250.0])  # one very long batch among short ones
    for _ in range(6):
        b._queue.append(object())
    assert b.retry_after() == 2  # 3 batches of 0.5 s, not 250 s


def test_python_api_rejects_a_float_step_count(tiny_bundle):
    import metis_cli
    from metis_cli.errors import UsageError

    with pytest.raises(UsageError, match="steps: must be an integer"):
        metis_cli.load("se", checkpoint_dir=tiny_bundle, offline=True, steps=2.0)
    pipe = metis_cli.load("se", checkpoint_dir=tiny_bundle, offline=True)
    with pytest.raises(UsageError, match="must be an integer"):
        pipe.decoding(steps=2.0)
    assert pipe.decoding(steps=3).steps == 3 and isinstance(pipe.model_name, str) and pipe.device == "cpu"

"""Voices (voices.json, uploads kept in a folder) and in-memory audio in/out, without a server."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf

from metis_cli.errors import AudioError, UsageError
from metis_cli.serve import media
from metis_cli.serve.voices import VoiceStore, valid_name
from tests.serve.conftest import wav_bytes


def test_voices_file_and_its_errors(tmp_path):
    (tmp_path / "p.wav").write_bytes(wav_bytes(3.0))
    good = tmp_path / "voices.json"
    good.write_text(json.dumps({"alice": {"audio": "p.wav", "text": "A transcript.", "language": "en"}}))
    store = VoiceStore()
    assert store.load_file(good) == 1
    v = store.get("alice")
    assert v.source == "config" and v.text == "A transcript." and v.audio.sample_rate == 24_000
    assert (
        store.get(v.id) is v and store.get("../alice") is None and store.get(str(tmp_path / "p.wav")) is None
    )
    for content, words in (
        ({"../x": {"audio": "p.wav", "text": "T."}}, "names are 1-64"),
        ({"bob": {"audio": "missing.wav", "text": "T."}}, "cannot read"),
        ({"bob": {"audio": "p.wav"}}, "text is empty"),
        ({"bob": {"audio": "p.wav", "text": "T.", "language": "xx"}}, "language: must be one of"),
        ({"bob": {"audio": "voices.json", "text": "T."}}, "unreadable or unsupported"),
        ({}, "must be a JSON object"),
    ):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(content))
        with pytest.raises(UsageError) as err:
            VoiceStore().load_file(bad)
        assert words in str(err.value) and str(bad) in str(err.value)
    with pytest.raises(UsageError, match="voices file not found"):
        VoiceStore().load_file(tmp_path / "nope.json")


def test_uploaded_voices_persist_in_a_folder(tmp_path):
    folder = tmp_path / "voices"
    store = VoiceStore(folder)
    store.load_folder()
    audio = media.decode_upload(wav_bytes(2.0, 16_000), "audio")
    v = store.add(audio, "Text of it.", "en", name="carol")
    assert sorted(p.name for p in folder.iterdir()) == [f"{v.id}.json", f"{v.id}.wav"]
    again = VoiceStore(folder)
    assert again.load_folder() == 1
    w = again.get("carol")
    assert w.id == v.id and w.text == "Text of it." and w.language == "en"
    assert np.array_equal(w.audio.samples, audio.samples) and w.audio.sample_rate == 16_000
    with pytest.raises(KeyError):
        again.add(audio, "Another.", None, name="carol")
    again.delete(v.id)
    assert list(folder.iterdir()) == [] and again.get("carol") is None
    with pytest.raises(KeyError):
        again.delete(v.id)
    assert not valid_name("a/b") and not valid_name("..") and not valid_name("") and valid_name("en-GB_1.x")


def test_decode_upload_errors_are_one_line():
    for data, words in (
        (b"", "empty upload"),
        (b"\x00\x01garbage" * 30, "unreadable or unsupported audio format"),
        (wav_bytes(0.0), "zero samples"),
    ):
        with pytest.raises(AudioError) as err:
            media.decode_upload(data, "input")
        msg = str(err.value)
        assert msg.startswith("input: ") and words in msg and "\n" not in msg and "BytesIO" not in msg
    nan = io.BytesIO()
    sf.write(nan, np.array([0.0, np.nan, 0.1], np.float32), 16_000, format="WAV", subtype="FLOAT")
    with pytest.raises(AudioError, match="non-finite"):
        media.decode_upload(nan.getvalue(), "input")


def test_encode_formats():
    wav = (np.sin(np.arange(24_000) / 7.0) * 0.5).astype(np.float32)
    ref = sf.read(io.BytesIO(media.encode(wav, "wav")), dtype="int16")[0]
    assert np.array_equal(np.frombuffer(media.encode(wav, "pcm"), "<i2"), ref)
    assert np.array_equal(sf.read(io.BytesIO(media.encode(wav, "flac")), dtype="int16")[0], ref)
    assert media.response_formats() == ("mp3", "opus", "aac", "flac", "wav", "pcm")
    for fmt in set(media.response_formats()) - {"wav", "flac", "pcm"}:  # lossy: decoded back by PyAV
        back = media.decode_upload(media.encode(wav, fmt), fmt)
        assert back.sample_rate in (24_000, 48_000)
        assert abs(back.samples.shape[0] / back.sample_rate - 1.0) < 0.1

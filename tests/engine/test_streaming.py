"""Streaming generation (`Pipeline.stream`) and speaker prompts encoded once (`core.prompt_cache`),
on the tiny bundle (issue 22)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import soundfile as sf

from metis_cli.constants import CODEC_SAMPLE_RATE
from metis_cli.core.prompt_cache import PromptCache, content_hash
from metis_cli.errors import Cancelled
from metis_cli.media import chunks as chunking
from metis_cli.media.audio import AudioArray
from metis_cli.text import sentences
from tests.conftest import FAST, FAST_API, speechlike

SR = CODEC_SAMPLE_RATE
TEXT = "The first one is short. The second sentence is a bit longer. And here is the third."
KW = dict(prompt_text="a prompt of some words", language="en", prompt_language="en")


@pytest.fixture
def bundle(tiny_bundle):
    return tiny_bundle


@pytest.fixture(autouse=True)
def _fake_phones(monkeypatch):
    """The tiny bundle has no English front end worth its time: phones from word lengths."""
    from metis_cli import text as textfe

    def fake_ids(prompt_text, target_text, prompt_language=None, target_language=None):
        return [3 + len(w) for w in prompt_text.split()], [3 + len(w) for w in target_text.split()]

    monkeypatch.setattr(textfe, "tts_phone_ids", fake_ids)


def _load(bundle, task="tts", **kw):
    from metis_cli import api

    return api.load(task, checkpoint_dir=bundle, device="cpu", **{**FAST_API, **kw})


def _prompt(tmp_path, seconds=3.0, seed=0):
    path = tmp_path / f"prompt{seed}.wav"
    sf.write(path, speechlike(seconds, seed=seed), SR)
    return path


def test_stream_pieces_put_the_first_sentence_alone():
    assert sentences.stream_pieces(TEXT, 300) == [
        "The first one is short.",
        "The second sentence is a bit longer. And here is the third.",
    ]
    assert sentences.stream_pieces("Just one.", 300) == ["Just one."]
    # with pieces of at most 40 characters every sentence is its own piece: as split_text
    assert sentences.stream_pieces(TEXT, 40) == sentences.split_text(TEXT, 40)


def test_tts_stream_equals_the_long_text_path(bundle, tmp_path):
    prompt = _prompt(tmp_path)
    pipe = _load(bundle, max_chars=40)  # TEXT (84 characters) takes the long path: one piece per sentence
    stream = pipe.stream(prompt, text=TEXT, seed=7, **KW)
    blocks = list(stream)
    assert len(blocks) == 3 and stream.info["chunks"] == 3 and stream.seed == 7
    whole = pipe(prompt, text=TEXT, seed=7, **KW)
    assert whole.info["chunks"] == 3
    np.testing.assert_array_equal(np.concatenate(blocks), whole.wav)
    # the first block is the first sentence alone, with its derived seed, its end faded
    alone = _load(bundle, max_chars=10_000)(
        prompt, text="The first one is short.", seed=chunking.chunk_seed(7, 0), **KW
    ).wav
    np.testing.assert_array_equal(blocks[0], chunking.edge_fades(alone, 120, False, True))


def test_a_one_sentence_stream_equals_the_plain_call(bundle, tmp_path):
    prompt = _prompt(tmp_path)
    pipe = _load(bundle)
    (block,) = list(pipe.stream(prompt, text="Only a single sentence here.", seed=3, **KW))
    np.testing.assert_array_equal(block, pipe(prompt, text="Only a single sentence here.", seed=3, **KW).wav)


def test_cancel_stops_the_remaining_pieces(bundle, tmp_path):
    prompt = _prompt(tmp_path)
    pipe = _load(bundle, max_chars=40)
    made = []
    real = pipe.engine.generator.decode
    pipe.engine.generator.decode = lambda codes: made.append(1) or real(codes)
    cancel = threading.Event()
    stream = pipe.stream(prompt, text=TEXT, seed=1, cancel=cancel, **KW)
    first = next(iter(stream))
    assert first.shape[0] > 0 and len(made) == 1
    cancel.set()
    with pytest.raises(Cancelled):
        next(iter(stream))
    assert len(made) == 1  # nothing more was generated


def test_cancel_stops_within_decoding_steps(bundle, tmp_path):
    prompt = _prompt(tmp_path)
    pipe = _load(bundle, steps=6)
    checks, decoded = [], []
    pipe.engine.generator.decode = lambda codes: decoded.append(1)
    stream = pipe.stream(
        prompt, text="Only one sentence.", seed=1, cancel=lambda: checks.append(1) or len(checks) > 3, **KW
    )
    with pytest.raises(Cancelled):
        list(stream)
    assert len(checks) == 4 and not decoded  # stopped at the 4th noise draw (stage 1, step 2)


def test_long_audio_streams_chunk_by_chunk_as_the_long_path(bundle, tmp_path):
    src = tmp_path / "long.wav"
    sf.write(src, speechlike(12.0, seed=2), SR)
    pipe = _load(bundle, "se", chunk_seconds=5.0, overlap_seconds=0.5, context_seconds=1.0)
    blocks = list(pipe.stream(src, seed=5))
    assert len(blocks) >= 3
    np.testing.assert_array_equal(np.concatenate(blocks), pipe(src, seed=5).wav)


# ------------------------------------------------------------------------------ prompt cache


def test_content_hash_follows_content_not_names(tmp_path):
    a, b = _prompt(tmp_path, seed=1), tmp_path / "copy.wav"
    b.write_bytes(a.read_bytes())
    assert content_hash(a) == content_hash(b) != content_hash(_prompt(tmp_path, seed=2))
    x = speechlike(1.0, seed=1)
    assert content_hash(AudioArray(x, SR, "one")) == content_hash(AudioArray(x.copy(), SR, "two"))
    assert content_hash(AudioArray(x, SR)) != content_hash(AudioArray(x, 16_000))
    assert content_hash(tmp_path / "absent.wav") is None


@pytest.mark.parametrize("task", ["tts", "vc", "tse"])
def test_a_cached_prompt_gives_bit_identical_audio(bundle, tmp_path, task):
    prompt = _prompt(tmp_path, seed=4)
    src = tmp_path / "src.wav"
    sf.write(src, speechlike(2.0, seed=9), SR)
    cold = _load(bundle, task)
    cold.engine.prompt_cache = None
    warm = _load(bundle, task)
    if task == "tts":
        args, kw = (prompt,), dict(text="Some words to say.", **KW)
    else:
        args, kw = (src, prompt), {}
    ref = cold(*args, seed=2, **kw).wav
    cache = warm.engine.prompt_cache
    first = warm(*args, seed=2, **kw).wav
    assert (cache.misses, cache.hits) == (1, 0)
    again = warm(*args, seed=2, **kw).wav  # the same content under another name: a hit
    copy = tmp_path / "copy.wav"
    copy.write_bytes(prompt.read_bytes())
    renamed = warm(*((copy,) if task == "tts" else (src, copy)), seed=2, **kw).wav
    assert (cache.misses, cache.hits) == (1, 2)
    for out in (first, again, renamed):
        np.testing.assert_array_equal(out, ref)


def test_the_lru_is_bounded_and_pinned_entries_persist(bundle, tmp_path):
    pipe = _load(bundle)
    cache = PromptCache(max_entries=1, persist_dir=tmp_path / "enc")
    (tmp_path / "enc").mkdir()
    pipe.engine.prompt_cache = cache
    a, b = _prompt(tmp_path, seed=1), _prompt(tmp_path, seed=2)
    cache.pin(content_hash(a))
    kw = dict(text="Some words.", seed=0, **KW)
    ref = pipe(a, **kw).wav
    pipe(b, **kw)
    pipe(_prompt(tmp_path, seed=3), **kw)
    assert len(cache) == 2  # the pinned one + one unpinned
    assert len(list((tmp_path / "enc").glob("*.safetensors"))) == 1  # only the pinned one on disk
    tiny = PromptCache(max_bytes=1)
    pipe.engine.prompt_cache = tiny
    pipe(b, **kw)
    assert len(tiny) == 0 and tiny.misses == 1  # over the byte bound: not kept
    fresh = PromptCache(persist_dir=tmp_path / "enc")  # a restart: read back from disk
    fresh.pin(content_hash(a))
    pipe.engine.prompt_cache = fresh
    np.testing.assert_array_equal(pipe(a, **kw).wav, ref)
    assert (fresh.misses, fresh.hits) == (0, 1)
    fresh.unpin(content_hash(a))
    assert not list((tmp_path / "enc").glob("*.safetensors"))


def test_the_cli_encodes_a_shared_prompt_once_per_run(bundle, tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from metis_cli.cli import app
    from metis_cli.core import tokenizer

    ref, srcs = _prompt(tmp_path, seed=1), []
    for i in range(3):
        srcs.append(tmp_path / f"s{i}.wav")
        sf.write(srcs[-1], speechlike(2.0, seed=10 + i), SR)
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"source": str(s), "reference": str(ref), "output": str(tmp_path / f"o{i}.wav")})
            + "\n"
            for i, s in enumerate(srcs)
        )
    )
    encodes = []
    real = tokenizer.Tokenizers.acoustic_codes
    monkeypatch.setattr(
        tokenizer.Tokenizers, "acoustic_codes", lambda self, *a, **k: encodes.append(1) or real(self, *a, **k)
    )
    env = {"METIS_CHECKPOINT_DIR": str(bundle)}
    res = CliRunner().invoke(app, ["vc", "--manifest", str(manifest), *FAST], env=env, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert all((tmp_path / f"o{i}.wav").is_file() for i in range(3))
    assert len(encodes) == 1  # one prompt, three jobs: encoded once

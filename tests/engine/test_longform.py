"""Long inputs: chunk planning, block reading, joins, text splitting, and the engine's chunked path
on the tiny bundle (issue 8)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from metis_cli.constants import CODEC_SAMPLE_RATE, HOP_SAMPLES, TRAIN_MAX_SECONDS
from metis_cli.errors import InputError, MetisError
from metis_cli.media import chunks as chunking
from metis_cli.media.audio import load_audio
from metis_cli.options import LongformOptions
from metis_cli.text import sentences

SR = CODEC_SAMPLE_RATE
FAST = dict(device="cpu", steps=2, s2a_steps_1layer=(2,), s2a_steps_full=(2, 2) + (1,) * 10)
LONG = dict(chunk_seconds=5.0, overlap_seconds=0.5, context_seconds=1.0)


def _chirp(seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """Low-amplitude chirp + noise with a few quiet gaps."""
    t = np.arange(int(seconds * sr)) / sr
    x = 0.05 * np.sin(2 * np.pi * (120 + 40 * (t % 7)) * t)
    x += 0.005 * np.random.default_rng(seed).standard_normal(t.shape[0])
    x *= np.where((t % 11.0) > 10.4, 0.05, 1.0)  # a quiet 0.6 s every 11 s
    return x.astype(np.float32)


# ------------------------------------------------------------------------------ pure parts


@pytest.mark.parametrize("n", [251, 1000, 4321, 9000])
def test_plan_covers_with_bounded_overlapping_chunks(n):
    rng = np.random.default_rng(n)
    chunks = chunking.plan_chunks(rng.random(n), chunk=250, overlap=25, search=50)
    assert chunks[0].start == 0 and chunks[-1].stop == n
    assert chunks[0].fade_in == 0 and chunks[-1].fade_out == 0
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert a.stop - b.start == 25 == a.fade_out == b.fade_in
    assert all(c.frames <= 250 for c in chunks)
    assert all(c.frames >= 100 for c in chunks)


def test_plan_moves_cuts_into_quiet_frames():
    n = 1000
    energy = np.ones(n)
    energy[560:600] = 1e-6  # quiet 0.8 s near the nominal join at 500
    (first, second) = chunking.plan_chunks(energy, chunk=800, overlap=20, search=200)
    assert 560 <= second.start and first.stop <= 600  # the whole crossfade is in the quiet part
    flat = chunking.plan_chunks(np.ones(n), chunk=800, overlap=20, search=200)
    assert flat[1].start == 500 - 10  # no quiet part: nominal place


def test_short_input_is_one_chunk():
    assert chunking.plan_chunks(np.ones(250), chunk=250, overlap=25, search=50) == [
        chunking.Chunk(0, 0, 250, 0, 0)
    ]


def test_options_validation():
    LongformOptions().validate()
    LongformOptions(chunk_seconds=0).validate()
    for bad in (dict(chunk_seconds=2), dict(chunk_seconds=31), dict(overlap_seconds=8), dict(max_chars=5)):
        with pytest.raises(InputError):
            LongformOptions(**bad).validate()


def test_chunk_seeds_differ_by_index_and_seed():
    seeds = {chunking.chunk_seed(s, i) for s in (0, 1, 2**40) for i in range(50)}
    assert len(seeds) == 150
    assert chunking.chunk_seed(7, 3) == chunking.chunk_seed(7, 3)


def test_equal_power_fades_and_stitching_keep_level():
    w_out, w_in = chunking.equal_power_fades(480)
    np.testing.assert_allclose(w_out**2 + w_in**2, 1.0, atol=1e-6)
    # two chunks of one constant level (uncorrelated noise) join without a level jump
    rng = np.random.default_rng(0)
    chunks = chunking.plan_chunks(np.ones(600), chunk=250, overlap=25, search=0)
    st = chunking.Stitcher(600 * HOP_SAMPLES)
    out = [st.add(0.1 * rng.standard_normal(c.frames * HOP_SAMPLES).astype(np.float32), c) for c in chunks]
    out.append(st.finish())
    y = np.concatenate(out)
    assert y.shape[0] == 600 * HOP_SAMPLES
    rms = np.sqrt(np.mean(y.reshape(-1, HOP_SAMPLES) ** 2, axis=1))
    assert rms.min() > 0.08 and rms.max() < 0.12
    # a constant signal stays continuous through every join
    st = chunking.Stitcher(600 * HOP_SAMPLES)
    y = np.concatenate([st.add(np.full(c.frames * HOP_SAMPLES, 0.5, np.float32), c) for c in chunks])
    assert np.abs(np.diff(y)).max() < 0.5 * np.pi / 2 / (25 * HOP_SAMPLES) * 1.01


@pytest.mark.parametrize("sr", [24000, 44100, 22050, 16000, 8000])
def test_block_reading_matches_whole_file_resampling(tmp_path, sr):
    path = tmp_path / "x.wav"
    sf.write(path, 0.3 * np.random.default_rng(sr).standard_normal(sr * 7).astype(np.float32), sr, "FLOAT")
    reader = chunking.BlockReader(path)
    whole = load_audio(path, 16000)
    assert reader.n_out == load_audio(path, SR).shape[0]
    for f0, f1 in ((0, 90), (137, 260), (300, reader.n_frames + 3)):
        block = reader.read16(f0, f1)
        ref = whole[f0 * 320 : f1 * 320]
        assert block.shape[0] == (f1 - f0) * 320
        np.testing.assert_allclose(block[: ref.shape[0]], ref, atol=2e-6)
        assert not block[ref.shape[0] :].any()
    energy = reader.frame_energy()
    assert energy.shape == (reader.n_frames,)
    assert np.isclose(energy[: reader.n_frames - 1].mean(), 0.09, rtol=0.1)


def test_split_text_at_sentences():
    text = 'First sentence here. Second one? "Quoted third." Fourth!\nFifth line 3.14 ok. ' * 5
    pieces = sentences.split_text(text, 60)
    assert all(len(p) <= 60 for p in pieces)
    assert " ".join(pieces).split() == text.split()
    assert all(p.endswith((".", "?", "!", '."')) for p in pieces)
    assert sentences.split_text("短句。第二句！第三句？", 6) == ["短句。", "第二句！", "第三句？"]
    long_words = sentences.split_text("word " * 100, 30)
    assert all(len(p) <= 30 for p in long_words) and " ".join(long_words).split() == ["word"] * 100
    np.testing.assert_allclose(sum(sentences.split_duration(10.0, ["ab", "abcd", "é"])), 10.0)


# ------------------------------------------------------------------------------ engine (tiny bundle)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from metis_cli.testing.tiny_bundle import write_tiny_bundle

    torch.set_num_threads(1)
    return write_tiny_bundle(tmp_path_factory.mktemp("tiny"))


def _load(bundle, task="se", **kw):
    from metis_cli import api

    return api.load(task, checkpoint_dir=bundle, **{**FAST, **LONG, **kw})


def _wav(path, seconds, sr=SR, seed=0):
    sf.write(path, _chirp(seconds, sr, seed), sr)
    return path


def _record_lengths(engine) -> dict[str, list[int]]:
    """Sequence lengths of every transformer forward and every SSL input, per component."""
    seen: dict[str, list[int]] = {"stage1": [], "s2a": [], "ssl": []}
    for name, key in (("stage1", "stage1"), ("s2a_1layer", "s2a"), ("s2a_full", "s2a")):
        net = engine.component(name).diff_estimator
        run = net.run

        def spy(h, *args, run=run, key=key, **kw):
            seen[key].append(int(h.shape[1]))  # (B, N, H) backbone input
            return run(h, *args, **kw)

        net.run = spy
    tok = engine.tokenizers
    inner = tok.ssl_features

    def ssl(wav16, what="input"):
        seen["ssl"].append(len(wav16))
        return inner(wav16, what=what)

    tok.ssl_features = ssl
    return seen


def test_long_se_streams_with_bounded_calls_and_continuous_joins(bundle, tmp_path):
    seconds = 180.0
    src = _wav(tmp_path / "long.wav", seconds)
    pipe = _load(bundle)
    seen = _record_lengths(pipe.engine)
    progress = []
    job = pipe.make_job([src], tmp_path / "out.wav", seed=3)
    (rep,) = list(pipe.run([job], on_chunk=progress.append))
    assert rep.status == "ok", rep.error
    out, sr = sf.read(tmp_path / "out.wav", dtype="float32")
    assert sr == SR and out.shape[0] == int(seconds * SR)  # output length == input length at 24 kHz
    n_chunks = rep.info["chunks"]
    assert n_chunks >= 36 and [p.index for p in progress] == list(range(n_chunks))
    assert progress[-1].seconds_done == pytest.approx(seconds)
    # memory: every model call is bounded by the chunk (+ carried context + margin), not the file
    bound = (LONG["chunk_seconds"] + LONG["context_seconds"]) * 50 + 3
    assert max(seen["stage1"]) <= bound and max(seen["s2a"]) <= bound
    assert max(seen["ssl"]) <= bound * 320
    assert len(seen["ssl"]) == n_chunks
    assert len(seen["stage1"]) % n_chunks == 0 and len(seen["s2a"]) % n_chunks == 0  # same per chunk
    assert rep.info["max_read_samples"] <= 60 * SR + 1  # energy pass reads 60 s blocks at most
    # joins: no sample jump above the signal's own local derivative scale around the join
    chunks = _replan(src, pipe)
    for c in chunks[1:]:
        a, b = c.start * HOP_SAMPLES, (c.start + c.fade_in) * HOP_SAMPLES
        around = np.abs(np.diff(out[a - 2400 : a])).max(), np.abs(np.diff(out[b : b + 2400])).max()
        assert np.abs(np.diff(out[a - 1 : b + 1])).max() <= 1.5 * max(around) + 2 / 32768
    assert not list(tmp_path.glob(".out.wav*"))  # no temporary file left


def _replan(src, pipe):
    lf = pipe.engine.longform.options
    r = chunking.BlockReader(src)
    frames = chunking.seconds_to_frames(min(lf.chunk_seconds, TRAIN_MAX_SECONDS - lf.context_seconds))
    return chunking.plan_chunks(
        r.frame_energy(),
        frames,
        chunking.seconds_to_frames(lf.overlap_seconds),
        chunking.seconds_to_frames(lf.search_seconds),
    )


def test_chunked_runs_are_deterministic_per_seed(bundle, tmp_path):
    src = _wav(tmp_path / "mid.wav", 16.0, sr=44100)
    pipe = _load(bundle)
    a, b, c = (pipe(src, seed=s).wav for s in (5, 5, 6))
    assert a.shape[0] == load_audio(src, SR).shape[0]  # librosa length rule (384001 here)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_engine_joins_are_crossfades_without_steps(bundle, tmp_path):
    """Each chunk decodes to its own constant level: the output must glide between levels (a hard
    cut would step by 0.1; the tiny model's noise-like output cannot show that)."""
    src = _wav(tmp_path / "mid.wav", 16.0)
    pipe = _load(bundle)
    levels = iter(np.arange(1, 100) * 0.1)
    pipe.engine.tokenizers.decode = lambda codes: np.full(
        codes.shape[0] * HOP_SAMPLES, next(levels), np.float32
    )
    res = pipe(src, seed=0)
    out = res.wav
    assert out.shape[0] == 16 * SR and res.info["chunks"] >= 3
    fade = int(LONG["overlap_seconds"] * SR)
    # slope of a*cos + b*sin is at most (pi/2)/fade * sqrt(a^2 + b^2); a hard cut would jump by 0.1
    assert np.abs(np.diff(out)).max() <= np.pi / 2 / fade * np.sqrt(2) * out.max() * 1.01
    assert out[0] == pytest.approx(0.1) and out[-1] == pytest.approx(0.1 * res.info["chunks"])


def test_vc_chunks_keep_the_speaker_prompt(bundle, tmp_path):
    src = _wav(tmp_path / "src.wav", 14.0, seed=1)
    ref = _wav(tmp_path / "ref.wav", 2.0, seed=2)
    pipe = _load(bundle, "vc")
    seen = _record_lengths(pipe.engine)
    res = pipe(src, ref, seed=1)
    assert res.wav.shape[0] == 14 * SR and res.info["chunks"] >= 3
    ref16 = int(2.0 * 16000)
    assert all(n - ref16 <= (LONG["chunk_seconds"] * 50 + 3) * 320 for n in seen["ssl"][1:])


def test_shorter_than_a_chunk_equals_unchunked(bundle, tmp_path):
    src = _wav(tmp_path / "short.wav", 4.0)
    chunked, plain = _load(bundle), _load(bundle, chunk_seconds=0)
    np.testing.assert_array_equal(chunked(src, seed=2).wav, plain(src, seed=2).wav)
    for pipe, name in ((chunked, "a.wav"), (plain, "b.wav")):
        (rep,) = list(pipe.run([pipe.make_job([src], tmp_path / name, seed=2)]))
        assert rep.status == "ok"
    np.testing.assert_array_equal(sf.read(tmp_path / "a.wav")[0], sf.read(tmp_path / "b.wav")[0])


def test_a_failing_chunk_leaves_no_output(bundle, tmp_path):
    src = _wav(tmp_path / "mid.wav", 16.0)
    pipe = _load(bundle)
    real, calls = pipe.engine.generator.codes, []

    def flaky(ready, decoding, *rest):
        calls.append(1)
        if len(calls) == 3:
            raise MetisError("boom")
        return real(ready, decoding, *rest)

    pipe.engine.generator.codes = flaky
    (rep,) = list(pipe.run([pipe.make_job([src], tmp_path / "out.wav", seed=0)]))
    assert rep.status == "error" and "boom" in rep.error
    assert list(tmp_path.iterdir()) == [src]


def test_long_tts_text_is_generated_piece_by_piece(bundle, tmp_path, monkeypatch):
    from metis_cli import text as textfe

    def fake_ids(prompt_text, target_text, prompt_language=None, target_language=None):
        return [3 + len(w) for w in prompt_text.split()], [3 + len(w) for w in target_text.split()]

    monkeypatch.setattr(textfe, "tts_phone_ids", fake_ids)
    prompt = _wav(tmp_path / "prompt.wav", 3.0)
    text = "One short sentence here. " * 3 + "And another rather longer sentence follows it now. " * 2
    pipe = _load(bundle, "tts", max_chars=60)
    kw = dict(seed=4, prompt_text="a prompt of some words", language="en", prompt_language="en")
    res = pipe(prompt, text=text, **kw)
    pieces = sentences.split_text(text, 60)
    assert res.info["chunks"] == len(pieces) >= 3
    # each piece is what the short path gives for it (with the piece's derived seed), edges faded
    fade, last = int(0.005 * SR), len(pieces) - 1
    single = _load(bundle, "tts", max_chars=10_000)
    expect = [
        chunking.edge_fades(
            single(prompt, text=p, **{**kw, "seed": chunking.chunk_seed(4, i)}).wav, fade, i > 0, i < last
        )
        for i, p in enumerate(pieces)
    ]
    np.testing.assert_array_equal(res.wav, np.concatenate(expect))


@pytest.mark.slow
def test_thirty_minutes_of_enhancement(bundle, tmp_path):
    seconds = 1800.0
    src = _wav(tmp_path / "long.wav", seconds)
    pipe = _load(bundle, chunk_seconds=20.0, overlap_seconds=1.0, context_seconds=2.0)
    seen = _record_lengths(pipe.engine)
    (rep,) = list(pipe.run([pipe.make_job([src], tmp_path / "out.wav", seed=0)]))
    assert rep.status == "ok", rep.error
    assert sf.info(tmp_path / "out.wav").frames == int(seconds * SR)
    assert max(seen["stage1"] + seen["s2a"]) <= 22 * 50 + 3
    assert max(seen["ssl"]) <= (22 * 50 + 3) * 320

"""Engine behaviour on the tiny bundle: the official hidden SSL draws, failure isolation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from metis_cli import api
from metis_cli.constants import SSL_NUM_LAYERS_OFFICIAL
from metis_cli.core import decoding
from metis_cli.core.ssl import official_hidden_draws
from metis_cli.media.chunks import chunk_seed
from tests.conftest import FAST_API, speechlike


def wav(path: Path, seconds: float, seed: int = 0) -> Path:
    sf.write(path, speechlike(seconds, seed=seed), 24_000)
    return path


def load(bundle: Path, task: str, **kw):
    return api.load(task, checkpoint_dir=bundle, offline=True, device="cpu", **FAST_API, **kw)


@pytest.fixture
def first_draws(monkeypatch):
    """The first uniform tensor each job's noise source hands out, in creation order."""
    record: list[dict] = []
    real_init, real_uniform = decoding.TorchNoise.__init__, decoding.TorchNoise.uniform

    def init(self, generator=None):
        real_init(self, generator)
        self._slot = len(record)
        record.append({})

    def uniform(self, shape, kind, device=None):
        u = real_uniform(self, shape, kind, device)
        record[self._slot].setdefault("first", (tuple(shape), u.clone()))
        return u

    monkeypatch.setattr(decoding.TorchNoise, "__init__", init)
    monkeypatch.setattr(decoding.TorchNoise, "uniform", uniform)
    return record


def expected_first(seed: int, hidden_forwards: int, shape: tuple[int, ...]) -> torch.Tensor:
    """What a generator seeded with `seed` gives after the documented hidden draws (spec §12)."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(hidden_forwards):
        official_hidden_draws(gen, SSL_NUM_LAYERS_OFFICIAL)
    return torch.empty(shape, dtype=torch.float32).uniform_(0, 1, generator=gen)


def check(record_item: dict, seed: int, hidden: int) -> None:
    shape, got = record_item["first"]
    assert torch.equal(got, expected_first(seed, hidden, shape))
    if hidden:  # the same seed without the hidden draws gives other numbers: the draws are taken
        assert not torch.equal(got, expected_first(seed, 0, shape))


def test_hidden_ssl_draws_se_vc_tts(tiny_bundle, tmp_path, first_draws):
    a = wav(tmp_path / "a.wav", 1.0)
    r = wav(tmp_path / "r.wav", 1.0, seed=1)
    load(tiny_bundle, "se")(a, seed=5)
    check(first_draws[-1], 5, 1)  # SE: one w2v-BERT forward (the noisy input)
    load(tiny_bundle, "vc")(a, r, seed=6)
    check(first_draws[-1], 6, 2)  # VC: two (the reference, then [reference ; source])
    load(tiny_bundle, "tts")(r, seed=7, text="Hello there.", prompt_text="A short prompt.", language="en",
                             prompt_language="en")  # fmt: skip
    check(first_draws[-1], 7, 1)  # TTS: one (the prompt)


def test_hidden_draws_of_chunks_and_tts_pieces(tiny_bundle, tmp_path, first_draws):
    long = wav(tmp_path / "long.wav", 10.0)
    res = load(tiny_bundle, "se", chunk_seconds=3, overlap_seconds=0.5, context_seconds=1)(long, seed=8)
    n = res.info["chunks"]
    assert n >= 3 and len(first_draws) == n
    for i, item in enumerate(first_draws):  # chunk i: seed chunk_seed(8, i), no hidden draws
        check(item, chunk_seed(8, i), 0)
    first_draws.clear()
    prompt = wav(tmp_path / "p.wav", 1.0, seed=2)
    text = "First sentence is here. Second sentence follows it. A third one ends the text."
    res = load(tiny_bundle, "tts", max_chars=30)(
        prompt, seed=9, text=text, prompt_text="A short prompt.", language="en", prompt_language="en"
    )
    assert res.info["chunks"] == len(first_draws) >= 2
    for i, item in enumerate(first_draws):  # TTS piece i: seed chunk_seed(9, i), its own prompt forward
        check(item, chunk_seed(9, i), 1)


def test_any_exception_fails_only_its_job(tiny_bundle, tmp_path):
    pipe = load(tiny_bundle, "se")
    files = [wav(tmp_path / f"{n}.wav", 0.6, seed=i) for i, n in enumerate("abc")]
    real = pipe.engine.generator.conditions

    def conditions(job):
        if job.inputs["input"].name == "b.wav":
            raise RuntimeError("simulated bug\nsecond line")
        return real(job)

    pipe.engine.generator.conditions = conditions
    jobs = [pipe.make_job([f], tmp_path / f"{f.stem}.out.wav", seed=1) for f in files]
    reps = list(pipe.run(jobs))
    assert [r.status for r in reps] == ["ok", "error", "ok"]
    assert reps[1].error == f"{files[1]}: RuntimeError: simulated bug"  # one line, naming the job
    assert reps[1].audio_seconds == pytest.approx(0.6)  # readable input: its length is reported


def test_a_failing_padded_batch_reruns_its_items_alone(tiny_bundle, tmp_path):
    files = [wav(tmp_path / f"{n}.wav", 0.6 + 0.1 * i, seed=i) for i, n in enumerate("abc")]
    ref = load(tiny_bundle, "se")
    alone = [ref(f, seed=s).wav for f, s in zip(files, (1, 666, 3), strict=True)]
    pipe = load(tiny_bundle, "se", batch_size=3)
    real, calls = pipe.engine.generator.codes, []

    def codes(ready, decoding):
        calls.append(len(ready))
        if any(job.seed == 666 for job, _ in ready):
            raise torch.cuda.OutOfMemoryError("simulated out of memory")
        return real(ready, decoding)

    pipe.engine.generator.codes = codes
    jobs = [
        pipe.make_job([f], tmp_path / f"{f.stem}.out.wav", seed=s)
        for f, s in zip(files, (1, 666, 3), strict=True)
    ]
    reps = list(pipe.run(jobs))
    assert calls == [3, 1, 1, 1]  # the batch, then each item alone
    assert [r.status for r in reps] == ["ok", "error", "ok"]
    assert "OutOfMemoryError: simulated out of memory" in reps[1].error
    for i in (0, 2):  # fp32: the re-run items equal their batch-1 results
        np.testing.assert_array_equal(sf.read(jobs[i].output, dtype="float32")[0], _pcm16(alone[i]))


def _pcm16(x: np.ndarray) -> np.ndarray:
    """What a PCM-16 WAV stores of a float waveform, read back as float32."""
    import io

    buf = io.BytesIO()
    sf.write(buf, x, 24_000, format="WAV", subtype="PCM_16")
    buf.seek(0)
    return sf.read(buf, dtype="float32")[0]


def test_dropped_pipeline_frees_its_models_without_gc(tiny_bundle):
    import gc
    import weakref

    pipe = load(tiny_bundle, "se")
    pipe.engine.load_all()
    ref = weakref.ref(pipe.engine.component("stage1"))
    gc.disable()
    try:
        del pipe
        assert ref() is None  # no reference cycle keeps the weights alive until gc.collect()
    finally:
        gc.enable()


def test_static_shapes_engine_option_is_token_identical_in_fp32(tiny_bundle, tmp_path, monkeypatch):
    """--static-shapes reaches the loops (finished items ride along) and, in fp32 on CPU, gives the
    default loop's audio for every item of a padded batch of unequal lengths."""
    files = [wav(tmp_path / f"{n}.wav", s, seed=i) for i, (n, s) in enumerate((("a", 0.6), ("b", 1.1)))]
    outs, calls = {}, []
    real = decoding.remask_static
    monkeypatch.setattr(decoding, "remask_static", lambda *a, **k: calls.append(1) or real(*a, **k))
    for static in (False, True):
        pipe = load(tiny_bundle, "se", batch_size=2, static_shapes=static)
        assert pipe.engine.options.static_shapes is static
        jobs = [pipe.make_job([f], tmp_path / f"{f.stem}.{static}.wav", seed=3) for f in files]
        assert [r.status for r in pipe.run(jobs)] == ["ok", "ok"]
        outs[static] = [sf.read(j.output)[0] for j in jobs]
        assert bool(calls) is static  # the fixed-shape re-mask ran exactly when asked for
    for a, b in zip(outs[False], outs[True], strict=True):
        np.testing.assert_array_equal(a, b)


def test_prompts_outside_the_training_range_warn(tiny_bundle, tmp_path):
    src = wav(tmp_path / "src.wav", 1.0)
    short, ok = wav(tmp_path / "short.wav", 1.5, seed=1), wav(tmp_path / "ok.wav", 3.5, seed=2)
    pipe = load(tiny_bundle, "vc")
    reps = list(
        pipe.run([pipe.make_job([src, r], tmp_path / f"{r.stem}.out.wav", seed=1) for r in (short, ok)])
    )
    assert [r.status for r in reps] == ["ok", "ok"]
    assert reps[0].info["warnings"] == [
        f"{short}: speaker prompt is 1.5 s, outside the 3-30 s of the training data"
    ]
    assert "warnings" not in reps[1].info


def test_low_memory_frees_large_models_on_the_long_input_path(tiny_bundle, tmp_path, monkeypatch):
    long = wav(tmp_path / "long.wav", 10.0)
    pipe = load(tiny_bundle, "se", chunk_seconds=3, overlap_seconds=0.5, context_seconds=1, low_memory=True)
    seen: list[set[str]] = []
    real = decoding.metis_semantic_to_acoustic

    def s2a(*a, **k):  # what is resident while a chunk's S2A runs
        seen.append(pipe.engine.loader.resident)
        return real(*a, **k)

    monkeypatch.setattr(decoding, "metis_semantic_to_acoustic", s2a)
    res = pipe(long, seed=1)
    assert res.info["chunks"] == len(seen) >= 3
    assert all(not (r & {"ssl", "stage1"}) for r in seen)  # w2v-BERT and stage 1 freed every chunk

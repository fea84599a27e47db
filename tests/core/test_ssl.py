"""SSL feature path: truncation exactness, frame rule, normalisation, hidden RNG draws."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertModel

from metis_cli.constants import SSL_LAYER, SSL_NUM_LAYERS_OFFICIAL
from metis_cli.core.ssl import (
    OFFICIAL_STATS_PATH,
    SSLFeatureExtractor,
    load_stats,
    num_ssl_frames,
    official_hidden_draws,
)
from metis_cli.errors import AudioError, CheckpointError, MissingModelError
from metis_cli.testing.tiny_ssl import STATS_FILENAME, write_tiny_w2v_bert

HIDDEN = 16


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add synchronisation cost on a shared 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_w2v_bert(tmp_path_factory.mktemp("w2v"), hidden_size=HIDDEN, num_layers=18, seed=0)


@pytest.fixture(scope="module")
def ssl(tiny_dir: Path) -> SSLFeatureExtractor:
    return SSLFeatureExtractor.from_dir(tiny_dir)


@pytest.fixture(scope="module")
def full_model(tiny_dir: Path):
    model = Wav2Vec2BertModel.from_pretrained(str(tiny_dir), attn_implementation="eager").eval()
    return model, SeamlessM4TFeatureExtractor.from_pretrained(str(tiny_dir))


def _wav(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, n).astype(np.float32)


def _full_hidden(full_model, wav: np.ndarray) -> tuple[torch.Tensor, ...]:
    model, extractor = full_model
    inputs = extractor(wav, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        out = model(
            inputs["input_features"], attention_mask=inputs["attention_mask"], output_hidden_states=True
        )
    return out.hidden_states


# --- exactness of the truncated encoder ---------------------------------------------------


@pytest.mark.parametrize("n", [16000, 16160])  # even and odd fbank counts (odd: last frame masked)
def test_truncated_encoder_equals_full_hidden_state_17(ssl, full_model, n: int):
    wav = _wav(n, seed=n)
    hidden_states = _full_hidden(full_model, wav)
    assert len(hidden_states) == 18 + 1
    assert len(ssl._model.encoder.layers) == SSL_LAYER
    feats, mask = ssl.fbank(wav)
    assert int(mask[0, -1]) == (1 + (n - 400) // 160) % 2 ^ 1  # masked exactly when n_fbank is odd
    ours = ssl.encode(feats, mask)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, hidden_states[SSL_LAYER])
    assert not torch.equal(ours, hidden_states[SSL_LAYER + 1])  # the index really matters


def test_call_normalises_with_stats_file(ssl, full_model, tiny_dir: Path):
    wav = _wav(12345, seed=7)
    stats = load_file(str(tiny_dir / STATS_FILENAME))
    expected = (_full_hidden(full_model, wav)[SSL_LAYER] - stats["mean"]) / torch.sqrt(stats["var"])
    got = ssl(wav)
    assert got.shape == (1, num_ssl_frames(12345), HIDDEN) and got.dtype == torch.float32
    assert torch.equal(got, expected)


def test_explicit_stats_override(tiny_dir: Path, ssl):
    mean, var = torch.full((HIDDEN,), 0.5), torch.full((HIDDEN,), 4.0)
    custom = SSLFeatureExtractor(tiny_dir, stats=(mean, var))
    wav = _wav(4000, seed=3)
    raw = ssl.encode(*ssl.fbank(wav))
    assert torch.equal(custom(wav), (raw - 0.5) / 2.0)


# --- frame rule and input checks ------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "frames"),
    [
        (201_600, 629),
        (64_000, 199),
        (125_776, 392),
        (70_410, 219),
        (67_360, 210),
        (160_000, 499),
        (72_363, 225),
    ],
)
def test_frame_rule_matches_spec_examples(n: int, frames: int):
    assert num_ssl_frames(n) == frames


@pytest.mark.parametrize("n", [400, 559, 560, 719, 720, 881, 8000, 16_001])
def test_model_frame_count(ssl, n: int):
    n_fbank = 1 + (n - 400) // 160
    feats = ssl(_wav(n, seed=n))
    assert feats.shape == (1, math.ceil(n_fbank / 2), HIDDEN)
    assert feats.shape[1] == num_ssl_frames(n)
    assert torch.isfinite(feats).all()


def test_short_input_rejected(ssl):
    assert num_ssl_frames(399) == 0
    with pytest.raises(AudioError, match=r"prompt\.wav: too short .*399 samples"):
        ssl(_wav(399), name="prompt.wav")
    with pytest.raises(AudioError, match="mono"):
        ssl(np.zeros((2, 1000), dtype=np.float32))
    bad = _wav(1000)
    bad[10] = np.nan
    with pytest.raises(AudioError, match="non-finite"):
        ssl(bad)


# --- attention implementations, dtype, unloading --------------------------------------------


def test_eager_and_sdpa_agree(tiny_dir: Path, ssl):
    sdpa = SSLFeatureExtractor.from_dir(tiny_dir, attn_impl="sdpa")
    assert sdpa._model.config._attn_implementation == "sdpa"
    assert ssl._model.config._attn_implementation == "eager"
    wav = _wav(16160, seed=11)
    a, b = ssl(wav), sdpa(wav)
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_bf16_mode_runs_and_returns_fp32(tiny_dir: Path, ssl):
    fast = SSLFeatureExtractor.from_dir(tiny_dir, dtype=torch.bfloat16)
    assert next(fast._model.parameters()).dtype == torch.bfloat16
    wav = _wav(8000, seed=5)
    out, ref = fast(wav), ssl(wav)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert (out - ref).abs().mean() < 0.2 * ref.abs().mean()


def test_unload_and_reload(tiny_dir: Path):
    x = SSLFeatureExtractor.from_dir(tiny_dir)
    wav = _wav(3000, seed=9)
    first = x(wav)
    x.unload()
    assert not x.loaded
    assert torch.equal(x(wav), first)
    assert x.loaded


# --- loading errors and stats ---------------------------------------------------------------


def test_missing_model_dir(tmp_path: Path):
    with pytest.raises(MissingModelError, match="nothing"):
        SSLFeatureExtractor(tmp_path / "nothing")


def test_default_stats_are_official_and_mismatch_tiny(tiny_dir: Path):
    mean, var = load_stats(OFFICIAL_STATS_PATH)
    assert mean.shape == var.shape == (1024,)
    assert mean.dtype == var.dtype == torch.float32 and bool((var > 0).all())
    with pytest.raises(CheckpointError, match="hidden size 16 does not match the SSL stats \\(1024\\)"):
        SSLFeatureExtractor(tiny_dir)  # no from_dir: the official 1024-dim stats


def test_bad_stats_file(tmp_path: Path):
    from safetensors.torch import save_file

    path = tmp_path / "s.safetensors"
    save_file({"mean": torch.zeros(4)}, str(path))
    with pytest.raises(CheckpointError, match="exactly 'mean' and 'var'"):
        load_stats(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_stats(tmp_path / "missing.safetensors")


def test_too_few_layers(tmp_path: Path):
    with pytest.raises(ValueError, match="at least 17"):
        write_tiny_w2v_bert(tmp_path, num_layers=4)


def test_tiny_writer_is_deterministic_and_leaves_global_rng(tmp_path: Path):
    state = torch.get_rng_state()
    a = write_tiny_w2v_bert(tmp_path / "a", seed=3)
    b = write_tiny_w2v_bert(tmp_path / "b", seed=3)
    c = write_tiny_w2v_bert(tmp_path / "c", seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    ta, tb, tc = (load_file(str(d / "model.safetensors")) for d in (a, b, c))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert any(not torch.equal(ta[k], tc[k]) for k in ta)
    stats = load_file(str(a / STATS_FILENAME))
    assert stats["mean"].shape == stats["var"].shape == (HIDDEN,) and bool((stats["var"] > 0).all())


# --- RNG: the forward never draws; the official hidden draws are emulated --------------------


def test_forward_leaves_global_rng_untouched(ssl):
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    ssl(_wav(5000))
    assert torch.equal(torch.get_rng_state(), state)


def test_forward_guard_contains_draws(tiny_dir: Path):
    """Even an encoder that draws (training-mode layer drop, as 4.41.2 always did) leaves no trace."""
    x = SSLFeatureExtractor.from_dir(tiny_dir)
    x._model.encoder.train()
    x._model.config.layerdrop = 0.5
    torch.manual_seed(99)
    state = torch.get_rng_state()
    x(_wav(5000))
    assert torch.equal(torch.get_rng_state(), state)
    # without the guard this encoder really does draw
    feats, mask = x.fbank(_wav(5000))
    with torch.no_grad():
        x._model.encoder(x._model.feature_projection(feats)[0], attention_mask=mask)
    assert not torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("n", [1, SSL_NUM_LAYERS_OFFICIAL])
def test_hidden_draws_match_separate_scalar_draws(n: int):
    ours = torch.Generator().manual_seed(5)
    official_hidden_draws(ours, n)
    ref = torch.Generator().manual_seed(5)
    for _ in range(n):
        torch.rand([], generator=ref)
    assert torch.equal(ours.get_state(), ref.get_state())
    fresh = torch.Generator().manual_seed(5)
    assert not torch.equal(ours.get_state(), fresh.get_state())


def test_hidden_draws_default_is_24_and_match_seeded_global():
    seed = 2024
    gen = torch.Generator().manual_seed(seed)
    official_hidden_draws(gen)  # default n
    saved = torch.get_rng_state()
    try:
        torch.manual_seed(seed)
        for _ in range(24):
            torch.rand([])
        expected = torch.rand(3, 5)
        expected_gumbel_shape = torch.rand(2, 7, 11)
    finally:
        torch.set_rng_state(saved)
    assert torch.equal(torch.rand(3, 5, generator=gen), expected)
    assert torch.equal(torch.rand(2, 7, 11, generator=gen), expected_gumbel_shape)


def test_missing_weight_is_an_error(tmp_path: Path, tiny_dir: Path):
    import shutil

    from safetensors.torch import save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    tensors = load_file(str(broken / "model.safetensors"))
    key = next(k for k in tensors if k.startswith("encoder.layers.3."))
    del tensors[key]
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="1 missing key"):
        SSLFeatureExtractor.from_dir(broken)


def test_dropped_layers_are_not_loaded(ssl):
    assert len(ssl._model.encoder.layers) == SSL_LAYER
    assert ssl._model.adapter is None


def test_features_usable_in_autograd(ssl):
    """Features feed trainable models (finetune): they must not be inference tensors."""
    feats = ssl(_wav(3000))
    assert not feats.requires_grad and not feats.is_inference()
    layer = torch.nn.Linear(HIDDEN, 2)
    layer(feats).sum().backward()
    assert layer.weight.grad is not None


# --- strict meta-device loading ---------------------------------------------------------------


def test_meta_built_encoder_holds_the_file_tensors_of_the_kept_layers(ssl, full_model, tiny_dir: Path):
    """Built on the meta device from the config; every parameter is the file's tensor (no
    initialisation survives), the dropped layers are absent, bf16 casts the same tensors."""
    file = load_file(str(tiny_dir / "model.safetensors"))
    state = ssl._model.state_dict()
    assert not any(t.is_meta for t in state.values())
    kept = {k for k in file if not k.startswith("encoder.layers.") or int(k.split(".")[2]) < SSL_LAYER}
    assert set(state) == kept
    assert all(torch.equal(state[k], file[k]) for k in kept)
    full_state = full_model[0].state_dict()
    assert all(torch.equal(state[k], full_state[k]) for k in kept)
    fast = SSLFeatureExtractor.from_dir(tiny_dir, dtype=torch.bfloat16)
    assert all(torch.equal(v, file[k].to(torch.bfloat16)) for k, v in fast._model.state_dict().items())


def _broken_copy(tmp_path: Path, tiny_dir: Path, edit) -> Path:
    import shutil

    from safetensors.torch import save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    tensors = load_file(str(broken / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    return broken


def test_unexpected_key_in_a_kept_layer_is_an_error(tmp_path: Path, tiny_dir: Path):
    def edit(t):
        t["encoder.layers.2.extra.weight"] = torch.zeros(2)

    with pytest.raises(CheckpointError, match="1 unexpected key.*encoder.layers.2.extra.weight"):
        SSLFeatureExtractor.from_dir(_broken_copy(tmp_path, tiny_dir, edit))


def test_reshaped_weight_is_an_error(tmp_path: Path, tiny_dir: Path):
    def edit(t):
        t["encoder.layers.0.self_attn.linear_q.bias"] = torch.zeros(HIDDEN + 1)

    with pytest.raises(CheckpointError, match="shape mismatch.*linear_q.bias"):
        SSLFeatureExtractor.from_dir(_broken_copy(tmp_path, tiny_dir, edit))


def test_dropped_layer_keys_are_tolerated_even_when_broken(tmp_path: Path, tiny_dir: Path, ssl):
    """The discarded layers are never read: a reshaped tensor there changes nothing."""

    def edit(t):
        t[f"encoder.layers.{SSL_LAYER}.self_attn.linear_q.bias"] = torch.zeros(3)

    other = SSLFeatureExtractor.from_dir(_broken_copy(tmp_path, tiny_dir, edit))
    wav = _wav(5000, seed=1)
    assert torch.equal(other(wav), ssl(wav))


def test_missing_weights_file(tmp_path: Path, tiny_dir: Path):
    import shutil

    shutil.copytree(tiny_dir, tmp_path / "w")
    (tmp_path / "w" / "model.safetensors").unlink()
    with pytest.raises(MissingModelError, match="model.safetensors"):
        SSLFeatureExtractor.from_dir(tmp_path / "w")


def test_tensor_source_is_loaded_strictly(tiny_dir: Path, ssl):
    seen = {}

    def source(path, expected, unused):
        seen.update(path=path, expected=dict(expected), unused=list(unused))
        return {k: v for k, v in load_file(str(path)).items() if k in expected}

    alt = SSLFeatureExtractor.from_dir(tiny_dir, tensor_source=source)
    assert seen["path"] == tiny_dir / "model.safetensors"
    assert all(k.startswith(f"encoder.layers.{SSL_LAYER}.") for k in seen["unused"]) and seen["unused"]
    wav = _wav(4000, seed=2)
    assert torch.equal(alt(wav), ssl(wav))

    def lacking(path, expected, unused):
        return {k: v for k, v in source(path, expected, unused).items() if "linear_k" not in k}

    with pytest.raises(CheckpointError, match="missing key"):
        SSLFeatureExtractor.from_dir(tiny_dir, tensor_source=lacking)

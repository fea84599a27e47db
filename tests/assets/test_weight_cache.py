"""The on-disk bf16 weight cache: hits, identical outputs, stale and corrupted entries, opt-out."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from metis_cli import api
from metis_cli.assets import weight_cache
from metis_cli.errors import CheckpointError
from tests.conftest import FAST_API

SE_ENTRIES = 6  # w2v-BERT, semantic codec, merged stage 1, two S2A models, acoustic decoder


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "bf16"
    monkeypatch.setenv("METIS_BF16_CACHE_DIR", str(root))
    monkeypatch.delenv("METIS_BF16_CACHE", raising=False)
    return root


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> Path:
    import soundfile as sf

    from tests.conftest import speechlike

    path = tmp_path_factory.mktemp("in") / "noisy.wav"
    sf.write(path, speechlike(0.6, seed=4), 24_000)
    return path


def _enhance(bundle: Path, noisy: Path, out: Path, **options) -> tuple[np.ndarray, dict]:
    # CPU pinned: the cache merges LoRA on the CPU, the uncached path on the engine's device
    pipe = api.load(
        "se", checkpoint_dir=bundle, offline=True, dtype="bfloat16", device="cpu", **options, **FAST_API
    )
    pipe.engine.load_all()
    state = {k: v.clone() for k, v in pipe.engine.component("stage1").state_dict().items()}
    (res,) = pipe.engine.run([pipe.make_job([str(noisy)], out, seed=5)], pipe.decoding(), keep=True)
    assert res.ok, res.error
    return res.wav, state


def _entries(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in root.glob("*.safetensors")}


def test_second_load_hits_the_cache_and_gives_identical_output(
    tiny_bundle, noisy, cache, tmp_path, monkeypatch
):
    uncached, state0 = _enhance(tiny_bundle, noisy, tmp_path / "a.wav", bf16_cache=False)
    assert not cache.exists()
    first, state1 = _enhance(tiny_bundle, noisy, tmp_path / "b.wav")
    written = _entries(cache)
    assert len(written) == SE_ENTRIES
    assert not list(cache.glob("*.tmp"))

    import metis_cli.assets.lora as lora

    def no_merge(*a, **k):
        raise AssertionError("a cache hit must not merge LoRA again")

    monkeypatch.setattr(lora, "merge_lora", no_merge)
    second, state2 = _enhance(tiny_bundle, noisy, tmp_path / "c.wav")
    assert _entries(cache) == written  # nothing rebuilt
    assert np.array_equal(first, uncached) and np.array_equal(second, first)
    for k, v in state0.items():
        assert state1[k].dtype == torch.bfloat16 and torch.equal(state1[k], v) and torch.equal(state2[k], v)


def test_switched_off_by_environment(tiny_bundle, noisy, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("METIS_BF16_CACHE", "0")
    _enhance(tiny_bundle, noisy, tmp_path / "a.wav")
    assert not cache.exists()


def test_float32_never_uses_the_cache(tiny_bundle, noisy, cache, tmp_path):
    pipe = api.load("se", checkpoint_dir=tiny_bundle, offline=True, **FAST_API)
    pipe.engine.load_all()
    assert not cache.exists()


# --- the cache primitive ---------------------------------------------------------------------


def _source(path: Path, scale: float = 1.0) -> Path:
    g = torch.Generator().manual_seed(0)
    save_file({"w": torch.randn(4, 6, generator=g) * scale, "n": torch.arange(3)}, str(path))
    return path


def _cached(src: Path, root: Path, calls: list) -> dict[str, torch.Tensor]:
    from metis_cli.assets.checkpoint import read_tensors

    def build():
        calls.append(1)
        return read_tensors(src)

    return weight_cache.cached_tensors(
        [src], kind="test", dtype=torch.bfloat16, expected={"w": (4, 6), "n": (3,)}, build=build, root=root
    )


def test_entry_holds_the_cast_tensors(tmp_path):
    src, calls = _source(tmp_path / "s.safetensors"), []
    got = _cached(src, tmp_path / "c", calls)
    again = _cached(src, tmp_path / "c", calls)
    assert calls == [1]
    from metis_cli.assets.checkpoint import read_tensors

    ref = read_tensors(src)
    assert got["w"].dtype == torch.bfloat16 and torch.equal(got["w"], ref["w"].to(torch.bfloat16))
    assert torch.equal(got["n"], ref["n"]) and got["n"].dtype == torch.int64
    assert all(torch.equal(got[k], again[k]) for k in got)


def test_stale_entry_is_not_used(tmp_path):
    src, calls, root = _source(tmp_path / "s.safetensors"), [], tmp_path / "c"
    _cached(src, root, calls)
    (old,) = root.glob("*.safetensors")
    _source(src, scale=3.0)  # same path, same shapes, new values
    got = _cached(src, root, calls)
    assert calls == [1, 1]
    from metis_cli.assets.checkpoint import read_tensors

    assert torch.equal(got["w"], read_tensors(src)["w"].to(torch.bfloat16))
    assert not old.exists() and len(list(root.glob("*.safetensors"))) == 1  # replaced, not piled up
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: rebuilt too
    _cached(src, root, calls)
    assert calls == [1, 1, 1]


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        _flip_last_byte,
        lambda p: p.write_bytes(p.read_bytes()[:-7]),  # truncated
        lambda p: p.write_bytes(b"garbage"),  # not safetensors at all
        lambda p: save_file({"w": torch.zeros(4, 6, dtype=torch.bfloat16)}, str(p)),  # key lost, no metadata
        lambda p: save_file(  # right layout and identity copied, but float32
            {"w": torch.zeros(4, 6), "n": torch.arange(3)},
            str(p),
            metadata=__import__("safetensors").safe_open(str(p), "pt").metadata(),
        ),
    ],
    ids=["flipped-bit", "truncated", "garbage", "missing-key", "wrong-dtype"],
)
def test_corrupted_entry_is_rebuilt(tmp_path, damage, caplog):
    src, calls, root = _source(tmp_path / "s.safetensors"), [], tmp_path / "c"
    good = _cached(src, root, calls)
    good = {k: v.clone() for k, v in good.items()}
    (entry,) = root.glob("*.safetensors")
    damage(entry)
    with caplog.at_level(logging.WARNING, logger="metis_cli.assets.weight_cache"):
        got = _cached(src, root, calls)
    assert calls == [1, 1]
    assert "rebuilding" in caplog.text
    assert all(torch.equal(got[k], good[k]) for k in good)
    _cached(src, root, calls)
    assert calls == [1, 1]  # the rebuilt entry is valid


def test_build_must_match_the_expected_layout(tmp_path):
    src = _source(tmp_path / "s.safetensors")
    with pytest.raises(CheckpointError, match="missing key"):
        weight_cache.cached_tensors(
            [src],
            kind="test",
            dtype=torch.bfloat16,
            expected={"w": (4, 6), "n": (3,), "x": (1,)},
            build=lambda: {"w": torch.zeros(4, 6), "n": torch.arange(3)},
            root=tmp_path / "c",
        )
    assert not (tmp_path / "c").exists()  # nothing written


def test_unwritable_folder_falls_back_to_the_converted_tensors(tmp_path):
    src, calls = _source(tmp_path / "s.safetensors"), []
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    got = _cached(src, blocker / "bf16", calls)
    assert calls == [1] and got["w"].dtype == torch.bfloat16


def test_data_checksum_sees_every_byte_and_is_stored(tmp_path):
    src, calls, root = _source(tmp_path / "s.safetensors"), [], tmp_path / "c"
    _cached(src, root, calls)
    (entry,) = root.glob("*.safetensors")
    from safetensors import safe_open

    with safe_open(str(entry), "pt") as fh:
        stored = fh.metadata()["metis_checksum"]
    assert stored == weight_cache.data_checksum(entry) != "0" * 16
    data = entry.read_bytes()
    start = 8 + int.from_bytes(data[:8], "little")
    for cut in (0, 3):  # aligned, and with unaligned head / tail bytes
        body = tmp_path / f"x{cut}.safetensors"
        raw = bytearray(data[: len(data) - cut])
        body.write_bytes(bytes(raw))
        base = weight_cache.data_checksum(body)
        for i in range(start, len(raw)):
            raw[i] ^= 1
            body.write_bytes(bytes(raw))
            assert weight_cache.data_checksum(body) != base, i
            raw[i] ^= 1

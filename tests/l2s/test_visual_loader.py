"""Loading the visual encoder checkpoint: namings, strictness, safe loading, errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from metis_cli.assets.visual_checkpoint import (
    load_visual_encoder,
    read_visual_config,
    save_tiny_visual_checkpoint,
)
from metis_cli.errors import CheckpointError, MissingModelError
from metis_cli.nn.visual import tiny_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_tiny_visual_checkpoint(tmp_path_factory.mktemp("vis"), seed=3)


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return torch.randn(1, 1, 6, 88, 88, generator=torch.Generator().manual_seed(1))


def _run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _rewrite(tmp: Path, tiny: tuple[Path, Path], edit) -> Path:
    state = torch.load(tiny[0], weights_only=True)
    out = tmp / "edited.pth"
    torch.save(edit(dict(state)), out)
    return out


def test_tiny_checkpoint_round_trip(tiny: tuple[Path, Path], clip: torch.Tensor) -> None:
    pth, js = tiny
    raw = torch.load(pth, weights_only=True)
    assert any(k.startswith("decoder.") for k in raw) and any(k.startswith("ctc.") for k in raw)
    assert all(k.startswith(("encoder.", "decoder.", "ctc.")) for k in raw)
    idim_odim_args = json.loads(js.read_text())
    assert isinstance(idim_odim_args, list) and len(idim_odim_args) == 3
    model = load_visual_encoder(pth)  # json found next to the pth
    assert model.cfg == tiny_config()
    assert not model.training
    y = _run(model, clip)
    assert y.shape == (1, 6, tiny_config().adim) and torch.isfinite(y).all()
    # the loaded weights are the file's
    torch.testing.assert_close(model.embed[0].weight, raw["encoder.embed.0.weight"])
    # deterministic in the seed, different across seeds
    pth2, _ = save_tiny_visual_checkpoint(pth.parent / "again", seed=3)
    pth3, _ = save_tiny_visual_checkpoint(pth.parent / "other", seed=4)
    torch.testing.assert_close(_run(load_visual_encoder(pth2), clip), y)
    assert not torch.allclose(_run(load_visual_encoder(pth3), clip), y)


def test_dtype_and_explicit_json(tiny: tuple[Path, Path], clip: torch.Tensor, tmp_path: Path) -> None:
    pth, js = tiny
    lone = tmp_path / "weights.pth"
    lone.write_bytes(pth.read_bytes())
    model = load_visual_encoder(lone, js, dtype=torch.float64)
    assert model.embed[0].weight.dtype == torch.float64
    ref = _run(load_visual_encoder(pth), clip)
    torch.testing.assert_close(_run(model, clip.double()).float(), ref, atol=1e-4, rtol=1e-4)
    # without a json the LRS3 (768-wide) defaults are used, which the tiny file does not fit
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_visual_encoder(lone)


def _auto_avsr_2025(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        if k.startswith("encoder.frontend."):
            k = k[len("encoder.") :]
        elif k.startswith("encoder.embed.0."):
            k = "proj_encoder." + k[len("encoder.embed.0.") :]
        out[k] = v
    return out


def _old_espnet(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        k = k.replace("encoder.embed.", "encoder.input_layer.").replace(
            "encoder.after_norm.", "encoder.norm."
        )
        out[k] = v
    return out


@pytest.mark.parametrize(
    "edit",
    [
        _auto_avsr_2025,
        _old_espnet,
        lambda s: {"state_dict": s},
        lambda s: {"model." + k: v for k, v in s.items()},
        lambda s: {k: v for k, v in s.items() if not k.endswith("num_batches_tracked")},
    ],
    ids=["auto_avsr_2025", "old_espnet", "wrapper", "lightning_prefix", "no_num_batches_tracked"],
)
def test_other_namings_load_identically(edit, tiny, clip, tmp_path: Path) -> None:
    ref = _run(load_visual_encoder(tiny[0]), clip)
    edited = _rewrite(tmp_path, tiny, edit)
    assert edited.read_bytes() != tiny[0].read_bytes()
    torch.testing.assert_close(_run(load_visual_encoder(edited, tiny[1]), clip), ref)


def test_missing_checkpoint_is_missing_model_error(tmp_path: Path) -> None:
    with pytest.raises(MissingModelError) as info:
        load_visual_encoder(tmp_path / "vis_model.pth")
    msg = str(info.value)
    assert "\n" not in msg
    assert "vis_model.pth" in msg and "LRS3_V_WER19.1" in msg and "--visual-checkpoint" in msg
    assert "non-commercial" in msg


def test_unexpected_key_is_an_error(tiny, tmp_path: Path) -> None:
    edited = _rewrite(tmp_path, tiny, lambda s: {**s, "lm.embed.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"edited\.pth.*unexpected key.*lm\.embed\.weight"):
        load_visual_encoder(edited, tiny[1])


def test_missing_encoder_key_is_named(tiny, tmp_path: Path) -> None:
    drop = "encoder.encoders.1.self_attn.linear_pos.weight"
    edited = _rewrite(tmp_path, tiny, lambda s: {k: v for k, v in s.items() if k != drop})
    with pytest.raises(
        CheckpointError, match=r"edited\.pth.*missing key.*" + drop.replace(".", r"\.")
    ) as info:
        load_visual_encoder(edited, tiny[1])
    assert "\n" not in str(info.value)


def test_wrong_shape_is_an_error(tiny, tmp_path: Path) -> None:
    key = "encoder.after_norm.weight"
    edited = _rewrite(tmp_path, tiny, lambda s: {**s, key: torch.ones(5)})
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_visual_encoder(edited, tiny[1])


class _Evil:
    def __reduce__(self):
        return (print, ("executed",))


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated", "pickled_object", "not_a_dict"])
def test_corrupt_or_unsafe_files(kind: str, tiny, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "model.pth"
    if kind == "garbage":
        bad.write_bytes(b"\x00not a checkpoint" * 50)
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "truncated":
        data = tiny[0].read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "pickled_object":
        bad.write_bytes(pickle.dumps({"encoder.x": _Evil()}, protocol=2))
    else:
        torch.save([torch.zeros(2)], bad)
    with pytest.raises(CheckpointError, match=r"model\.pth") as info:
        load_visual_encoder(bad, tiny[1])
    assert "\n" not in str(info.value)
    assert "executed" not in capsys.readouterr().out  # nothing from the file was run


def test_config_forms(tmp_path: Path) -> None:
    args = {"adim": 32, "aheads": 2, "eunits": 64, "elayers": 2, "rel_pos_type": "latest", "dlayers": 6}
    (tmp_path / "list.json").write_text(json.dumps([9216, 41, args]))
    (tmp_path / "dict.json").write_text(json.dumps(args))
    assert read_visual_config(tmp_path / "list.json") == read_visual_config(tmp_path / "dict.json")
    assert read_visual_config(tmp_path / "dict.json").adim == 32
    (tmp_path / "legacy.json").write_text(json.dumps({"transformer_encoder_attn_layer_type": "rel_mha"}))
    with pytest.raises(CheckpointError, match=r"legacy\.json.*rel_pos_type"):
        read_visual_config(tmp_path / "legacy.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"bad\.json"):
        read_visual_config(tmp_path / "bad.json")
    (tmp_path / "num.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"num\.json"):
        read_visual_config(tmp_path / "num.json")


def test_legacy_torch_save_format_loads(tiny, clip, tmp_path: Path) -> None:
    state = torch.load(tiny[0], weights_only=True)
    old = tmp_path / "old.pth"
    torch.save(state, old, _use_new_zipfile_serialization=False)  # pre-1.6 layout, not memory-mappable
    assert old.read_bytes()[:2] != b"PK"
    torch.testing.assert_close(
        _run(load_visual_encoder(old, tiny[1]), clip), _run(load_visual_encoder(tiny[0]), clip)
    )


def _not_checkpoints(tmp_path: Path) -> dict[str, Path]:
    """Files of other kinds given as --visual-checkpoint (each once raised IndexError/KeyError)."""
    import zipfile

    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    out = {}
    out["text"] = tmp_path / "notes.pth"
    out["text"].write_text("hello world\nthis is not a checkpoint\n")
    out["wav"] = tmp_path / "speech.wav"
    sf.write(out["wav"], np.zeros(1600, np.float32), 16000)
    out["random"] = tmp_path / "random.pth"
    out["random"].write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out["pickle_like"] = tmp_path / "p80.pth"  # starts like a pickle, then garbage
    out["pickle_like"].write_bytes(b"\x80\x04" + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out["zip"] = tmp_path / "archive.pth"
    with zipfile.ZipFile(out["zip"], "w") as z:
        z.writestr("readme.txt", "not torch")
    out["json"] = tmp_path / "model.json.pth"
    out["json"].write_text(json.dumps({"adim": 32}))
    return out


@pytest.mark.parametrize("kind", ["text", "wav", "random", "pickle_like", "zip", "json"])
def test_a_file_that_is_not_a_checkpoint_is_one_line(kind: str, tiny, tmp_path: Path, capsys) -> None:
    path = _not_checkpoints(tmp_path)[kind]
    with pytest.raises(CheckpointError) as info:
        load_visual_encoder(path, tiny[1])
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert "checkpoint" in msg
    assert capsys.readouterr().err == ""  # no warnings from the unpickler either

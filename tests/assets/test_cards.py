"""Model cards and the model store: where files are found, verified and fetched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from metis_cli.assets.cards import DEFAULT_MODEL, ModelStore, card_names, get_card, manifest
from metis_cli.errors import CheckpointError, InputError, MissingModelError


def test_every_card_is_complete():
    for name in card_names():
        card = get_card(name)
        assert card.repo.count("/") == 1 and card.files, name
        for spec in card.files.values():
            if spec.manifest:
                assert manifest(spec.manifest), f"{name}: empty manifest {spec.manifest}"
        for task in card.tasks:
            d = card.decoding_for(task)
            assert {"steps", "cfg", "temperature", "filter_thres", "s2a"} <= set(d), (name, task)
    for task, name in DEFAULT_MODEL.items():
        assert task in get_card(name).tasks


def test_official_default_decoding():
    """Spec §1.5: stage-1 steps/cfg per task and the fixed S2A settings."""
    expect = {"tts": (25, 2.5), "vc": (20, 1.0), "tse": (10, 0.0), "se": (10, 0.0), "l2s": (25, 2.5)}
    for task, (steps, cfg) in expect.items():
        d = get_card(DEFAULT_MODEL[task]).decoding_for(task)
        assert (d["steps"], d["cfg"], d["temperature"], d["filter_thres"]) == (steps, cfg, 0.9, 0.98)
        s2a = d["s2a"]
        assert s2a["steps_1layer"] == [40] and s2a["steps_full"] == [40, 16] + [1] * 10
        assert (s2a["cfg_1layer"], s2a["cfg_full"], s2a["temperature"]) == (0.0, 2.5, 1.5)


def test_aliases_and_unknown_names():
    assert get_card("metis-se").name == "metis-se-lora32"
    with pytest.raises(InputError, match="unknown model 'nope'"):
        get_card("nope")


def test_checkpoint_dir_matches_repo_case_insensitively(tmp_path):
    card = get_card("metis-base")
    f = tmp_path / "AMPHION" / "metis" / card.files["base"].path
    f.parent.mkdir(parents=True)
    f.write_bytes(b"x")
    store = ModelStore(tmp_path)
    assert store.path(card, "base") == f
    other = get_card("maskgct-codecs")
    with pytest.raises(MissingModelError, match="semantic_codec/model.safetensors.*--checkpoint-dir"):
        store.path(other, "semantic_codec", hint="metis-se-lora32")


def test_overrides_merge_into_card_configs(tmp_path):
    (tmp_path / "metis_config_overrides.json").write_text(
        json.dumps({"metis-base": {"t2s_model": {"hidden_size": 8}}})
    )
    cfg = ModelStore(tmp_path).config(get_card("metis-base"))["t2s_model"]
    assert cfg["hidden_size"] == 8 and cfg["num_layers"] == 16  # deep merge keeps the rest
    assert (
        ModelStore(tmp_path / "elsewhere").config(get_card("metis-base"))["t2s_model"]["hidden_size"] == 1536
    )


def _write_from_manifest(path: Path, name: str, drop: str | None = None, reshape: str | None = None) -> None:
    """A file with a manifest's header (tiny zero-stride tensors would not do: write real ones)."""
    tensors = {}
    for key, shape in manifest(name).items():
        if key == drop:
            continue
        shape = (3,) if key == reshape else shape
        tensors[key] = torch.zeros(shape)
    save_file(tensors, str(path))


def test_verify_checks_headers_against_the_manifest(tmp_path):
    card = get_card("metis-se-lora32")  # the adapter file is small at full size (15.7 M elements)
    store = ModelStore(tmp_path)
    good = tmp_path / "adapter.safetensors"
    _write_from_manifest(good, "metis_se_lora_r32_extracted_adapter")
    store.verify(card, "adapter", good)
    missing = tmp_path / "missing.safetensors"
    _write_from_manifest(missing, "metis_se_lora_r32_extracted_adapter", drop="model.cond_adapter.gate_scale")
    with pytest.raises(CheckpointError, match="missing.safetensors.*model.cond_adapter.gate_scale"):
        store.verify(card, "adapter", missing)
    bad = tmp_path / "bad.safetensors"
    _write_from_manifest(
        bad, "metis_se_lora_r32_extracted_adapter", reshape="model.cond_adapter.in_linear.bias"
    )
    with pytest.raises(CheckpointError, match="shape mismatch"):
        store.verify(card, "adapter", bad)


def test_failed_download_names_the_fix(tmp_path, monkeypatch):
    import huggingface_hub

    def refuse(repo_id: str, filename: str, **kw):
        raise OSError("connection refused")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # CI runs offline; the network is faked here
        monkeypatch.delenv(var, raising=False)
    store = ModelStore(None, offline=False)
    card = get_card("metis-vc-lora16")
    with pytest.raises(MissingModelError) as err:
        store.path(card, "lora")
    msg = str(err.value)
    assert "amphion/Metis/metis_vc/metis_vc_lora_16.safetensors" in msg and "connection refused" in msg
    assert "metis download metis-vc-lora16" in msg and "\n" not in msg


def test_models_command_verify_on_a_full_size_header(tmp_path):
    """`metis models --verify` flags a present file whose header is wrong, exit code 1."""
    from typer.testing import CliRunner

    from metis_cli.cli import app

    card = get_card("metis-se-lora32")
    f = tmp_path / "amphion" / "Metis" / card.files["adapter"].path
    f.parent.mkdir(parents=True)
    _write_from_manifest(f, "metis_se_lora_r32_extracted_adapter", drop="model.cond_adapter.out_linear.bias")
    res = CliRunner().invoke(app, ["models", "--verify", "--checkpoint-dir", str(tmp_path)])
    assert res.exit_code == 1
    assert "out_linear.bias" in res.stdout and "metis-se-lora32" in res.stdout

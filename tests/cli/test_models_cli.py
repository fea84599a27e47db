"""`metis models --verify`, `metis download` and the model store's offline/quiet behaviour."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from metis_cli.assets import cards
from metis_cli.assets.cards import ModelStore, get_card
from metis_cli.cli import app
from metis_cli.errors import CheckpointError, MissingModelError

CODEC = "amphion/MaskGCT/semantic_codec/model.safetensors"


@pytest.fixture
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle (tests damage files in it)."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def verify(root: Path, *extra: str):
    return CliRunner().invoke(app, ["models", "--verify", "--checkpoint-dir", str(root), *extra])


def test_intact_tiny_bundle_verifies_and_says_what_was_not_compared(bundle):
    res = verify(bundle)
    assert res.exit_code == 0, res.output
    assert "config overrides: " in res.stdout and "sizes are not" in res.stdout
    assert res.stdout.count("partly checked: sizes not compared") >= 18
    assert "no manifest for this file" in res.stdout  # w2v-BERT weights
    assert "✗" not in res.stdout and res.stdout.strip().endswith("verified: every present file")


def _damage(bundle: Path, how: str) -> Path:
    f = bundle / CODEC
    if how == "truncated":
        data = f.read_bytes()
        f.write_bytes(data[: len(data) - 1000])
    elif how == "random":
        f.write_bytes(bytes((i * 37 + 11) % 256 for i in range(5000)))
    elif how == "renamed":
        t = load_file(str(f))
        key = sorted(t)[0]
        t[key + "_x"] = t.pop(key)
        save_file(t, str(f))
    elif how == "dropped_in_one_layer":  # layer 0 still has it: only the per-layer check sees it
        t = load_file(str(f))
        del t[next(k for k in sorted(t) if k.startswith("decoder.0.convnext.1."))]
        save_file(t, str(f))
    elif how == "extra_bytes":
        with f.open("ab") as fh:
            fh.write(b"\0" * 64)
    elif how == "rank":
        t = load_file(str(f))
        key = next(k for k, v in sorted(t.items()) if v.ndim == 2)
        t[key] = t[key].reshape(-1)
        save_file(t, str(f))
    return f


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("truncated", "truncated: the header describes"),
        ("random", "not a safetensors file"),
        ("renamed", "1 unexpected key(s): decoder.N.convnext.N.dwconv.bias_x"),
        ("dropped_in_one_layer", "1 missing key(s): decoder.0.convnext.1."),
        ("extra_bytes", "unexpected bytes after the tensor data"),
        ("rank", "rank mismatch"),
    ],
)
def test_damaged_files_fail_verification(bundle, how, says):
    f = _damage(bundle, how)
    res = verify(bundle)
    assert res.exit_code == 1, res.output
    line = next(ln for ln in res.stdout.splitlines() if "semantic_codec/model.safetensors" in ln)
    assert line.strip().startswith("✗")
    assert says in res.stdout and str(f) in res.stdout
    assert "problems found" in res.stdout
    as_json = [json.loads(ln) for ln in verify(bundle, "--json").stdout.splitlines()]
    codecs = next(d for d in as_json if d["name"] == "maskgct-codecs")
    assert codecs["problems"] and any(r["verified"] is False for r in codecs["files"])


def test_store_verify_raises_for_a_truncated_file_without_overrides(bundle):
    (bundle / cards.OVERRIDES_FILE).unlink()
    f = _damage(bundle, "truncated")
    with pytest.raises(CheckpointError, match="truncated"):
        ModelStore(bundle).verify(get_card("maskgct-codecs"), "semantic_codec", f)


def test_paths_are_printed_literally(tiny_bundle, tmp_path):
    root = Path(shutil.copytree(tiny_bundle, tmp_path / "[bold]weights[/b]"))
    res = verify(root)
    assert res.exit_code == 0, res.output
    assert f"config overrides: {root}/" in res.stdout


def test_download_of_an_unknown_name_is_a_usage_error():
    res = CliRunner().invoke(app, ["download", "nope"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metis: error: unknown model 'nope'")
    assert "zh-frontend" in lines[0]


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """An empty HF cache, and any socket connection (from any library) recorded and refused."""
    import socket

    calls = []

    def forbidden(*args, **kwargs):
        calls.append(args)
        raise OSError("network attempted in an offline test")

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(socket.socket, "connect_ex", forbidden)
    monkeypatch.setattr(socket, "create_connection", forbidden)
    return calls


@pytest.mark.parametrize("how", ["env", "argument"])
def test_offline_means_no_network_and_one_line(no_network, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        store = ModelStore(None, offline=False)  # the environment wins
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        store = ModelStore(None, offline=True)
    with pytest.raises(MissingModelError) as err:
        store.path(get_card("metis-vc-lora16"), "lora")
    msg = str(err.value)
    assert "amphion/Metis/metis_vc/metis_vc_lora_16.safetensors" in msg and "\n" not in msg
    assert "metis download metis-vc-lora16" in msg
    assert no_network == []


def test_download_command_offline_is_one_line_without_network(no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = CliRunner().invoke(app, ["download", "metis-vc-lora16", "--quiet"])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metis: error: model ") and "offline" in lines[0]
    assert no_network == []


def _retrying_download(monkeypatch, tmp_path) -> None:
    """A real hf_hub_download against a closed port (its retries, without the sleeping)."""
    import huggingface_hub.utils._http as http

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(http.time, "sleep", lambda s: None)
    monkeypatch.setattr(cards, "env_offline", lambda: False)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(
        c, "HUGGINGFACE_CO_URL_TEMPLATE", "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    with pytest.raises(MissingModelError) as err:
        ModelStore(None, offline=False).path(get_card("metis-vc-lora16"), "lora", progress=False)
    assert "\n" not in str(err.value)


@pytest.fixture
def hub_logging_restored():
    names = [n for n in logging.Logger.manager.loggerDict if n.startswith("huggingface_hub")]
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).filters)) for n in names}
    yield
    for n, (level, filters) in saved.items():
        logging.getLogger(n).setLevel(level)
        logging.getLogger(n).filters[:] = filters


def test_quiet_hub_silences_the_retry_warnings(monkeypatch, tmp_path, caplog, hub_logging_restored):
    cards.quiet_hub(True)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):  # the root logger: the hub's own level decides
        _retrying_download(monkeypatch, tmp_path)
    assert [
        r for r in caplog.records if r.name.startswith("huggingface_hub") and r.levelno >= logging.WARNING
    ] == []


def test_without_quiet_each_distinct_warning_shows_once(monkeypatch, tmp_path, caplog, hub_logging_restored):
    logging.getLogger("huggingface_hub").setLevel(logging.WARNING)
    cards.quiet_hub(False)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _retrying_download(monkeypatch, tmp_path)
    msgs = [r.getMessage() for r in caplog.records if r.name.startswith("huggingface_hub")]
    assert msgs, "the hub logged no warning at all (did it retry?)"
    assert sum("Retrying in" in m for m in msgs) == 1
    assert len(msgs) == len(set(msgs))

"""L2S fine-tuning on the tiny bundle: synthetic pre-cropped mouth videos (96x96) and tones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from metis_cli import api
from metis_cli.assets.visual_checkpoint import save_tiny_visual_checkpoint
from metis_cli.cli import app
from metis_cli.errors import InputError
from metis_cli.nn.stage1 import l2s_condition
from metis_cli.train import data, finetune
from metis_cli.train.loop import TrainOptions, drop_prompts
from tests.conftest import FAST, FAST_API
from tests.l2s.synth import write_video

SR = 24000
FPS = 25
OPTS = dict(batch_size=3, lr=3e-3, warmup=4, max_frames=60, save_every=0)


def _pair(folder: Path, i: int, frames: int, rng: np.random.Generator) -> tuple[str, str]:
    """A random 96x96 mouth video of `frames` frames at 25 fps and a tone of the same duration."""
    write_video(folder / f"v{i}.mkv", (rng.random((frames, 96, 96, 3)) * 255).astype(np.uint8), FPS)
    t = np.arange(int(SR * frames / FPS)) / SR
    wav = 0.3 * np.sin(2 * np.pi * (140 + 60 * i) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    sf.write(folder / f"t{i}.wav", wav.astype(np.float32), SR)
    return f"v{i}.mkv", f"t{i}.wav"


@pytest.fixture(scope="module")
def l2s_env(train_env) -> dict:
    folder = train_env["root"] / "l2s"
    folder.mkdir()
    rng = np.random.default_rng(3)
    rows = []
    for i, frames in enumerate((20, 24, 28)):
        video, target = _pair(folder, i, frames, rng)
        row = {"video": video, "target": target}
        if i > 0:  # two of three examples have a speaker prompt
            t = np.arange(SR // 3) / SR
            sf.write(
                folder / f"p{i}.wav", (0.3 * np.sin(2 * np.pi * (220 + 30 * i) * t)).astype(np.float32), SR
            )
            row["prompt"] = f"p{i}.wav"
        rows.append(json.dumps(row))
    manifest = folder / "l2s.jsonl"
    manifest.write_text("\n".join(rows) + "\n")
    return {
        "folder": folder,
        "manifest": manifest,
        "visual": train_env["bundle"] / "visual" / "model.pth",
        "bundle": train_env["bundle"],
        "cache": folder / "cache",  # own cache: the visual miss/hit counts start from zero
    }


@pytest.fixture(scope="module")
def tuned_l2s(l2s_env):
    return finetune(
        "l2s",
        l2s_env["manifest"],
        l2s_env["folder"] / "out",
        checkpoint_dir=l2s_env["bundle"],
        cache_dir=l2s_env["cache"],
        visual_checkpoint=l2s_env["visual"],
        options=TrainOptions(max_steps=40, **OPTS),
    )


def test_l2s_finetune_learns_and_exports_merged(tuned_l2s):
    loss = tuned_l2s.history.loss
    assert len(loss) == 40 and tuned_l2s.examples == 3
    assert np.mean(loss[-8:]) < np.mean(loss[:8]) - 0.5
    out = tuned_l2s.out
    card = json.loads((out / "card.json").read_text())
    assert card["task"] == "l2s" and card["stage1"] == {"layout": "full", "ft_type": "l2s"}
    assert card["training"]["start"] == "metis-l2s" and card["training"]["mode"] == "lora"
    assert "visual_encoder" in card  # where to get the encoder travels with the model
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["stage1.safetensors"]
    state = load_file(str(out / "stage1.safetensors"))
    assert not any("lora" in k or "base_layer" in k for k in state)
    assert {k for k in state if k.startswith("cond_adapter.")} == {
        f"cond_adapter.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")
    }  # the plain (ungated) adapter


def test_l2s_visual_features_computed_once_then_cached(l2s_env, tmp_path, monkeypatch):
    import metis_cli.media.video as video

    calls = []
    real = video.visual_features

    def counted(encoder, rois):
        calls.append(rois.shape)
        return real(encoder, rois)

    monkeypatch.setattr(video, "visual_features", counted)
    kw = dict(
        checkpoint_dir=l2s_env["bundle"], cache_dir=tmp_path / "cache", visual_checkpoint=l2s_env["visual"]
    )
    first = finetune(
        "l2s", l2s_env["manifest"], tmp_path / "a", options=TrainOptions(max_steps=3, **OPTS), **kw
    )
    assert len(first.history.loss) == 3  # three epochs of the three items
    assert [s[0] for s in calls] == [20, 24, 28]  # one encoder run per video, at 25 fps

    def refuse(*a, **k):
        raise AssertionError("the visual encoder ran although its features are cached")

    monkeypatch.setattr(video, "visual_features", refuse)
    again = finetune(
        "l2s", l2s_env["manifest"], tmp_path / "b", options=TrainOptions(max_steps=1, **OPTS), **kw
    )
    assert again.examples == 3 and again.skipped == []
    assert again.cache_misses == 0 and again.cache_hits == first.cache_hits + first.cache_misses


def test_visual_cache_key_names_checkpoint_and_landmarks(l2s_env, tmp_path):
    class Options:
        visual_checkpoint = l2s_env["visual"]

    class Engine:
        options = Options()

    cache = data.FeatureCache(Engine(), l2s_env["cache"])
    video = l2s_env["folder"] / "v0.mkv"
    k0 = cache._key("visual", [video, None], cache.visual_identity)
    other_pth, _ = save_tiny_visual_checkpoint(tmp_path / "other", seed=1)
    Options.visual_checkpoint = other_pth
    other = data.FeatureCache(Engine(), l2s_env["cache"])
    assert other._key("visual", [video, None], other.visual_identity) != k0
    marks = tmp_path / "marks.npy"
    np.save(marks, np.zeros((20, 4, 2)))
    assert cache._key("visual", [video, marks], cache.visual_identity) != k0
    assert cache._key("visual", [video, None], cache.visual_identity) == k0


class FakeCache:
    """codes / visual of a fake cache: fixed tensors per path."""

    def __init__(self, codes: dict, visual: torch.Tensor):
        self._codes, self._visual = codes, visual

    def codes(self, files):
        return self._codes[files[0]]

    def visual(self, video, landmarks=None):
        return self._visual


@pytest.mark.parametrize("n_target", [38, 40, 43])  # video gives 2 x 20 = 40 frames at 50 Hz
def test_l2s_item_is_the_inference_condition_cut_to_the_shorter(n_target):
    feats = torch.randn(20, 6)
    prompt, target = torch.arange(7) + 100, torch.arange(n_target)
    ex = data.Example(Path("v.mkv"), Path("t.wav"), Path("p.wav"))
    item = data.l2s_item(FakeCache({Path("p.wav"): prompt, Path("t.wav"): target}, feats), ex)
    n = min(n_target, 40)
    assert item.prompt_len == 7 and len(item) == 7 + n
    assert torch.equal(item.x0, torch.cat([prompt, target[:n]]))
    full = l2s_condition(feats, 7)  # what build_l2s gives stage 1 at inference
    assert torch.equal(item.cond, full[: 7 + n])
    assert torch.count_nonzero(item.cond[:7]) == 0
    # CFG prompt dropout keeps the condition's target part (the unconditional branch's input)
    (cut,), dropped = drop_prompts([item], torch.Generator().manual_seed(0), cfg_scale=1.0)
    assert dropped and cut.prompt_len == 0
    assert torch.equal(cut.x0, target[:n]) and torch.equal(cut.cond, l2s_condition(feats, 0)[:n])


def test_l2s_item_refuses_misaligned_pairs():
    ex = data.Example(Path("v.mkv"), Path("t.wav"))
    cache = FakeCache({Path("t.wav"): torch.arange(60)}, torch.randn(20, 6))  # 60 vs 40 frames
    with pytest.raises(InputError, match="60 frames of speech but 40 of video"):
        data.l2s_item(cache, ex)


def test_l2s_manifest_keys(tmp_path):
    for name in ("v.mkv", "t.wav", "p.wav", "m.npy"):
        (tmp_path / name).write_bytes(b"x")
    rows = [
        {"video": "v.mkv", "target": "t.wav", "prompt": "p.wav", "landmarks": "m.npy"},
        {"video": "v.mkv"},
        {"video": "missing.mkv", "target": "t.wav"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    examples, problems = data.read_manifest(tmp_path / "m.jsonl", "l2s")
    assert len(examples) == 1
    ex = examples[0]
    assert (ex.input, ex.target, ex.prompt, ex.landmarks) == tuple(
        tmp_path / n for n in ("v.mkv", "t.wav", "p.wav", "m.npy")
    )
    assert "'target'" in problems[0] and "missing.mkv" in problems[1]


def test_tuned_l2s_loads_and_changes_the_output(tuned_l2s, l2s_env):
    video = l2s_env["folder"] / "v1.mkv"
    kw = dict(checkpoint_dir=l2s_env["bundle"], visual_checkpoint=l2s_env["visual"], device="cpu", **FAST_API)
    base = api.load("l2s", **kw)(video, seed=0).wav
    tuned = api.load("l2s", model=str(tuned_l2s.out), **kw)(video, seed=0).wav
    assert len(tuned) == len(base) > 0
    assert not np.array_equal(base, tuned)


def test_l2s_from_a_non_l2s_start_is_refused(l2s_env, tmp_path):
    with pytest.raises(InputError, match="l2s fine-tunes from metis-l2s"):
        finetune(
            "l2s",
            l2s_env["manifest"],
            tmp_path / "o",
            base="metis-base",
            checkpoint_dir=l2s_env["bundle"],
            cache_dir=l2s_env["cache"],
            visual_checkpoint=l2s_env["visual"],
            options=TrainOptions(max_steps=1, **OPTS),
        )


def _cli(env: dict, *args: str, extra_env: dict | None = None):
    args = [*args, "--checkpoint-dir", str(env["bundle"])]
    return CliRunner().invoke(app, list(args), env=extra_env, catch_exceptions=False)


def test_cli_needs_the_visual_checkpoint(l2s_env, tmp_path, monkeypatch):
    monkeypatch.delenv("METIS_VISUAL_CHECKPOINT", raising=False)
    common = (
        "finetune",
        "--task",
        "l2s",
        "--data",
        str(l2s_env["manifest"]),
        "--cache-dir",
        str(l2s_env["cache"]),
    )
    res = _cli(l2s_env, *common, "--out", str(tmp_path / "o"))
    assert res.exit_code == 2  # a usage error: nothing was run
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--visual-checkpoint" in lines[0], res.stderr
    assert not (tmp_path / "o").exists()
    res = _cli(
        l2s_env, *common, "--out", str(tmp_path / "o"), "--visual-checkpoint", str(tmp_path / "no.pth")
    )
    assert res.exit_code == 2 and "no.pth" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cli_finetune_then_metis_l2s_model_out(l2s_env, tmp_path, monkeypatch):
    monkeypatch.delenv("METIS_VISUAL_CHECKPOINT", raising=False)
    out = tmp_path / "l2s-cli"
    res = _cli(
        l2s_env,
        *("finetune", "--task", "l2s", "--data", str(l2s_env["manifest"]), "--out", str(out)),
        *("--max-steps", "2", "--batch-size", "3", "--warmup", "1", "--save-every", "0", "--json"),
        *("--cache-dir", str(l2s_env["cache"])),
        extra_env={"METIS_VISUAL_CHECKPOINT": str(l2s_env["visual"])},  # the env var names it too
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["steps"] == 2
    wav = tmp_path / "speech.wav"
    res = _cli(
        l2s_env,
        *("l2s", str(l2s_env["folder"] / "v0.mkv"), "--model", str(out), "-o", str(wav)),
        *("--visual-checkpoint", str(l2s_env["visual"]), *FAST),
    )
    assert res.exit_code == 0, res.output
    audio, sr = sf.read(wav)
    assert sr == SR and len(audio) == 480 * 40  # 20 video frames -> 40 semantic frames

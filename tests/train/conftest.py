"""Shared fixtures: the tiny bundle, synthesised SE data (chirps + noise) and a feature cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from metis_cli.testing.tiny_bundle import write_tiny_bundle

SR = 24000


def synth_pairs(folder: Path, n: int, seed: int, with_prompt: bool = False) -> Path:
    """n (noisy, clean) pairs of 0.8-1.3 s: amplitude-modulated chirps, plus white noise."""
    rng = np.random.default_rng(seed)
    subs = ("noisy", "clean", "prompt") if with_prompt else ("noisy", "clean")
    for sub in subs:
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        dur = rng.uniform(0.8, 1.3)
        t = np.arange(int(SR * dur)) / SR
        f0, f1 = rng.uniform(120, 300), rng.uniform(300, 900)
        env = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(1, 4) * t)
        clean = 0.4 * np.sin(2 * np.pi * (f0 * t + 0.5 * (f1 - f0) * t**2 / dur)) * env
        noisy = clean + 0.2 * rng.standard_normal(len(t))
        sf.write(folder / "clean" / f"{i}.wav", clean.astype(np.float32), SR)
        sf.write(folder / "noisy" / f"{i}.wav", noisy.astype(np.float32), SR)
        if with_prompt:
            sf.write(folder / "prompt" / f"{i}.wav", clean[: SR // 3].astype(np.float32), SR)
    return folder


def write_manifest(folder: Path, task: str = "se", name: str = "manifest.jsonl") -> Path:
    """A manifest of `task` over the pairs in `folder` (from `synth_pairs`; tse/vc need prompts)."""
    lines = []
    for noisy in sorted((folder / "noisy").glob("*.wav"), key=lambda p: int(p.stem)):
        n, c = f"noisy/{noisy.name}", f"clean/{noisy.name}"
        p = f"prompt/{noisy.name}"
        row = {
            "se": {"input": n, "target": c},
            "tse": {"mix": n, "enrol": p, "target": c},
            "vc": {"source": n, "reference": p, "target": c},
            "tts": {"text": "a rising tone", "audio": c, "language": "en"},
        }[task]
        lines.append(json.dumps(row))
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def train_env(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    env = {
        "bundle": write_tiny_bundle(root / "bundle"),
        "train": synth_pairs(root / "train", 10, seed=1, with_prompt=True),
        "val": synth_pairs(root / "val", 5, seed=2, with_prompt=True),
        "cache": root / "cache",
        "root": root,
    }
    for task in ("se", "tse", "vc", "tts"):
        env[f"train_{task}"] = write_manifest(env["train"], task, f"{task}.jsonl")
        env[f"val_{task}"] = write_manifest(env["val"], task, f"{task}.jsonl")
    return env

"""Shared fixtures: the tiny bundle, synthesised SE data (chirps + noise) and a feature cache."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def train_env(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    return {
        "bundle": write_tiny_bundle(root / "bundle"),
        "train": synth_pairs(root / "train", 10, seed=1),
        "val": synth_pairs(root / "val", 5, seed=2),
        "cache": root / "cache",
        "root": root,
    }

"""Shared fixtures: one tiny random model bundle per test session, small test signals."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

# Tiny models on a busy 2-core machine run far faster single-threaded.
torch.set_num_threads(1)

# bf16 runs write converted weights into a cache; keep it out of the user's ~/.cache (subprocesses
# inherit the variable)
_BF16_CACHE = tempfile.mkdtemp(prefix="metis_test_bf16_")
os.environ["METIS_BF16_CACHE_DIR"] = _BF16_CACHE
atexit.register(shutil.rmtree, _BF16_CACHE, True)

FAST = ["--steps", "2", "--s2a-steps", "2,2"]  # CLI decoding settings for quick end-to-end tests
FAST_API = {"steps": 2, "s2a_steps_1layer": (2,), "s2a_steps_full": (2, 2) + (1,) * 10}


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every component at tiny size in the official file layout (written once per session)."""
    from metis_cli.testing.tiny_bundle import write_tiny_bundle

    return write_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle"), seed=0)


def speechlike(seconds: float, sr: int = 24_000, seed: int = 0, f0: float = 180.0) -> np.ndarray:
    """A harmonic tone with a syllable-rate envelope and a little noise, float32 (N,)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t) ** 2
    wav = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 5)) * env * 0.1
    return (wav + 0.005 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture
def wav_factory(tmp_path: Path):
    """write(name, seconds, sr=24000, seed=0) -> path of a speech-like wav in tmp_path."""

    def write(name: str, seconds: float, sr: int = 24_000, seed: int = 0) -> Path:
        path = tmp_path / name
        sf.write(path, speechlike(seconds, sr, seed), sr)
        return path

    return write

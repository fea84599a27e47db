"""Discovery of golden cases (golden README, "How to check a case").

The golden root is `$METIS_GOLDEN_DIR` or the fixtures copy. A case is any folder below it
that holds `meta.json`; its kind is its relative path (`metis_lora/se`, `s2a_full`, ...).
Tests parametrise over the cases found and create no test for an absent kind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
GOLDEN_ROOT = Path(os.environ.get("METIS_GOLDEN_DIR", FIXTURES / "golden")).resolve()
MANIFEST_DIR = FIXTURES / "manifests"

FLOAT_ATOL = 1e-5  # golden README, Tolerances: every float tensor of a tiny case
MERGED_ATOL = 1e-6  # merged LoRA weights


@dataclass(frozen=True)
class Case:
    root: Path
    path: Path

    @property
    def kind(self) -> str:
        return self.path.relative_to(self.root).as_posix()

    @property
    def task(self) -> str:
        return self.kind.replace("/", "_").split("_")[-1]

    @cached_property
    def meta(self) -> dict:
        return json.loads((self.path / "meta.json").read_text())

    @cached_property
    def config(self) -> dict:
        return json.loads((self.path / "config.json").read_text())

    @cached_property
    def io(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / "io.safetensors"))

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / name))

    def call(self, run: str) -> dict:
        return self.meta["calls"][run]

    def __str__(self) -> str:  # pytest ids
        return self.kind


def all_cases(root: Path = GOLDEN_ROOT) -> list[Case]:
    if not root.is_dir():
        return []
    return sorted((Case(root, m.parent) for m in root.rglob("meta.json")), key=lambda c: c.kind)


def cases_where(pred) -> list[Case]:
    return [c for c in all_cases() if pred(c.kind)]


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, atol: float = FLOAT_ATOL, what: str = ""
) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if expected.is_floating_point():
        diff = (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0
        assert diff <= atol, f"{what}: max abs diff {diff:.3g} > {atol}"
    else:
        assert torch.equal(actual.to(expected.dtype), expected), f"{what}: integer tensors differ"

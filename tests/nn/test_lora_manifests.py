"""Key sets `metis_cli.assets.lora` expects for LoRA and adapter files vs the official extracted manifests."""

from __future__ import annotations

import pytest

from metis_cli.assets.checkpoint import build_on_meta
from metis_cli.assets.lora import ADAPTER_PREFIX, expected_lora_shapes
from metis_cli.nn.stage1 import MetisStage1, Stage1Config
from tests.golden.cases import MANIFEST_DIR
from tests.nn.full_size import FULL_SIZE_CONFIGS
from tests.nn.test_manifests import parse_manifest

LORA = {"metis_se_lora_r32_extracted_lora": ("se", 32), "metis_vc_lora_r16_extracted_lora": ("vc", 16)}


def _model(task: str) -> MetisStage1:
    cfg = Stage1Config.from_dict(FULL_SIZE_CONFIGS["t2s_model"] | {"use_lora": True}, task)
    return build_on_meta(lambda: MetisStage1(cfg))


@pytest.mark.parametrize("name", [n for n in LORA if (MANIFEST_DIR / f"{n}.txt").exists()])
def test_lora_keys_match_manifest(name):
    task, r = LORA[name]
    man = parse_manifest(MANIFEST_DIR / f"{name}.txt")
    assert expected_lora_shapes(_model(task), r) == {k: s for k, (s, _) in man.entries.items()}


def test_adapter_keys_match_manifest():
    man = parse_manifest(MANIFEST_DIR / "metis_se_lora_r32_extracted_adapter.txt")
    ours = {
        ADAPTER_PREFIX + k: tuple(v.shape)
        for k, v in _model("se").state_dict().items()
        if k.startswith("cond_adapter.")
    }
    assert ours == {k: s for k, (s, _) in man.entries.items()}

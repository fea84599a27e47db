"""Full-size state-dict layouts against the official manifests (golden README, "Manifests").

Table-driven: one `ManifestRow` per (manifest file, builder, tolerated differences). Each
builder constructs the component at official full size from `FULL_SIZE_CONFIGS`; it is
called under the meta device, so nothing is allocated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from torch import nn

from metis_cli.assets.checkpoint import build_on_meta
from metis_cli.nn.acoustic_codec import AcousticCodecConfig, CodecDecoder, CodecEncoder
from metis_cli.nn.s2a import S2A_TOLERATED_EXTRA, MaskGCTS2A, S2AConfig
from metis_cli.nn.semantic_codec import SemanticCodec, SemanticCodecConfig
from metis_cli.nn.stage1 import MetisStage1, Stage1Config
from tests.golden.cases import MANIFEST_DIR
from tests.nn.full_size import FULL_SIZE_CONFIGS


@dataclass(frozen=True)
class Manifest:
    entries: dict[str, tuple[tuple[int, ...], str]]  # key -> (shape, dtype name e.g. "float32")
    footer: dict[str, int]  # "tensors", "total_elements_in_file", "total_parameters"


def parse_manifest(path: Path) -> Manifest:
    """Parse `#` header lines, `key<TAB>[d0, d1, ...]<TAB>dtype` lines and `# name: N` footer lines."""
    entries: dict[str, tuple[tuple[int, ...], str]] = {}
    footer: dict[str, int] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            m = re.fullmatch(r"#\s*([a-z_]+):\s*(\d+)\s*", line)
            if m:
                footer[m.group(1)] = int(m.group(2))
            continue
        parts = line.split("\t")
        assert len(parts) == 3, f"{path.name}:{n}: expected key<TAB>shape<TAB>dtype, got {line!r}"
        key, shape, dtype = parts
        assert re.fullmatch(r"\[(\d+(, \d+)*)?\]", shape), f"{path.name}:{n}: bad shape {shape!r}"
        assert key not in entries, f"{path.name}:{n}: duplicate key {key}"
        entries[key] = (tuple(int(d) for d in shape[1:-1].split(", ") if d), dtype)
    return Manifest(entries, footer)


def _stage1(ft_type: str | None, **override) -> MetisStage1:
    return MetisStage1(Stage1Config.from_dict(FULL_SIZE_CONFIGS["t2s_model"] | override, ft_type))


def _acoustic() -> AcousticCodecConfig:
    return AcousticCodecConfig.from_dict(FULL_SIZE_CONFIGS["acoustic_codec"])


@dataclass(frozen=True)
class ManifestRow:
    manifest: str  # file stem under tests/fixtures/manifests
    build: Callable[[], nn.Module]  # builds the component at full size (called on the meta device)
    optional_keys: frozenset[str] = frozenset()  # manifest keys our module need not carry

    def __str__(self) -> str:  # pytest ids
        return self.manifest


ROWS: list[ManifestRow] = [
    ManifestRow(
        "semantic_codec",
        lambda: SemanticCodec(SemanticCodecConfig.from_dict(FULL_SIZE_CONFIGS["semantic_codec"])),
    ),
    ManifestRow("acoustic_codec_encoder", lambda: CodecEncoder(_acoustic().encoder)),
    # includes the persistent buffer model.head.istft.window (a real key of our module)
    ManifestRow("acoustic_codec_decoder", lambda: CodecDecoder(_acoustic().decoder)),
    # generators (stage 1, S2A)
    ManifestRow("t2s_tts", lambda: _stage1("tts", use_phone_cond=True)),
    ManifestRow("metis_base", lambda: _stage1(None)),
    ManifestRow("metis_se_full", lambda: _stage1("se")),
    ManifestRow("metis_tse_full", lambda: _stage1("tse")),
    ManifestRow("metis_vc_full", lambda: _stage1("vc")),
    ManifestRow("metis_l2s_full", lambda: _stage1("l2s", cond_dim=768)),
    ManifestRow("metis_omni_full", lambda: _stage1("omni", use_phone_cond=True)),
    *(
        ManifestRow(
            name,
            lambda name=name: MaskGCTS2A(S2AConfig.from_dict(FULL_SIZE_CONFIGS[name])),
            frozenset(S2A_TOLERATED_EXTRA),
        )
        for name in ("s2a_model_1layer", "s2a_model_full")
    ),
]


@pytest.mark.parametrize("path", sorted(MANIFEST_DIR.glob("*.txt")), ids=lambda p: p.stem)
def test_manifest_file_is_consistent(path: Path) -> None:
    """The parser reads every manifest, and its footer agrees with its lines."""
    if path.name == "SUMMARY.txt":
        assert path.read_text().strip()
        return
    man = parse_manifest(path)
    assert man.entries, f"{path.name}: no entries"
    assert man.footer.get("tensors") == len(man.entries), f"{path.name}: tensor count"
    total = sum(math.prod(shape) for shape, _ in man.entries.values())
    assert man.footer.get("total_elements_in_file") == total, f"{path.name}: element count"


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_state_dict_matches_manifest(row: ManifestRow) -> None:
    man = parse_manifest(MANIFEST_DIR / f"{row.manifest}.txt")
    module = build_on_meta(row.build)
    ours = {k: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in module.state_dict().items()}

    missing = sorted(set(man.entries) - set(ours) - row.optional_keys)
    extra = sorted(set(ours) - set(man.entries))
    assert not missing, f"{row}: {len(missing)} manifest key(s) missing from our module: {missing[:5]}"
    assert not extra, f"{row}: {len(extra)} key(s) not in the manifest: {extra[:5]}"
    wrong = [f"{k}: ours {ours[k]} manifest {man.entries[k]}" for k in ours if ours[k] != man.entries[k]]
    assert not wrong, f"{row}: {len(wrong)} shape/dtype mismatch(es): {wrong[:5]}"

    # parameters vs buffers: the manifest's parameter count excludes persistent buffers
    n_params = sum(p.numel() for p in module.parameters())
    assert n_params == man.footer["total_parameters"], f"{row}: {n_params} parameters"

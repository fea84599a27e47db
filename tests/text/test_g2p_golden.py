"""Official g2p / TTS-tokenizer goldens (tests/fixtures/g2p, or the file in $METIS_G2P_CASES).

The expected record for a case is the variant whose stack (espeak-ng, phonemizer) is the active
one, otherwise the case itself; an active stack covered by neither is a failure.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "g2p"
CASES = Path(os.environ.get("METIS_G2P_CASES", FIXTURES / "cases.jsonl"))
REFERENCE_STACK = ("1.51", "3.3.0")  # Debian espeak-ng 1.51 + phonemizer 3.3.0 (cases.jsonl)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _major_minor(text: str) -> str:
    m = re.search(r"(\d+)\.(\d+)", text)
    assert m, f"no version in {text!r}"
    return f"{m.group(1)}.{m.group(2)}"


def _variant_stacks() -> dict[tuple[str, str], str]:
    versions = CASES.parent / "versions.json"
    if not versions.is_file():
        return {}
    stacks = json.loads(versions.read_text(encoding="utf-8")).get("variant_stacks_in_variants_jsonl", {})
    return {(_major_minor(s["espeak_ng"]), s["phonemizer"]): name for name, s in stacks.items()}


def _variants() -> dict[str, dict[str, dict]]:
    path = CASES.parent / "variants.jsonl"
    table: dict[str, dict[str, dict]] = {}
    for rec in _read_jsonl(path) if path.is_file() else []:
        table.setdefault(rec["variant"], {})[rec["id"]] = rec
    return table


RECORDS = _read_jsonl(CASES)
VARIANTS = _variants()


@pytest.fixture(scope="module")
def expected_overrides() -> dict[str, dict]:
    """Variant records of the active stack (empty for the reference stack)."""
    from metis_cli.text import espeak_info

    info = espeak_info()
    stack = (_major_minor(info["espeak_ng"]), info["phonemizer"])
    if stack == REFERENCE_STACK:
        return {}
    name = _variant_stacks().get(stack)
    if name is None or name not in VARIANTS:
        pytest.fail(f"active stack espeak-ng {stack[0]} + phonemizer {stack[1]} is covered by no golden")
    return VARIANTS[name]


def _needs_zh(rec: dict) -> bool:
    texts = [rec.get("text") or "", rec.get("prompt_text") or "", rec.get("target_text") or ""]
    return any(re.search("[\u4e00-\u9fa5]", t) for t in texts)


@pytest.mark.parametrize("rec", [r for r in RECORDS if r["kind"] == "g2p"], ids=lambda r: r["id"])
def test_g2p_case(rec: dict, expected_overrides: dict, request: pytest.FixtureRequest) -> None:
    from metis_cli.text import g2p

    if _needs_zh(rec):
        request.getfixturevalue("zh_resources")
    expected = {**rec, **expected_overrides.get(rec["id"], {})}
    if expected.get("error"):
        # the official code raises "Exception: Unknown language: other" (or ": " for an empty
        # text) when nothing in the text maps to a language; ours says why in a TextError
        from metis_cli.errors import TextError

        reason = "empty text" if not rec["text"].strip() else "has no letters or Chinese characters"
        assert expected["error"].startswith("Exception: Unknown language:")
        with pytest.raises(TextError, match=reason):
            g2p(rec["text"], rec["lang"])
        return
    phones, ids = g2p(rec["text"], rec["lang"])
    assert ids == expected["ids"]
    assert phones == expected["phones"]


@pytest.mark.parametrize("rec", [r for r in RECORDS if r["kind"] == "tts"], ids=lambda r: r["id"])
def test_tts_case(rec: dict, expected_overrides: dict, request: pytest.FixtureRequest) -> None:
    from metis_cli.text import detect_language, target_length, tts_phone_ids

    if _needs_zh(rec):
        request.getfixturevalue("zh_resources")
    expected = {**rec, **expected_overrides.get(rec["id"], {})}
    for key in ("prompt", "target"):
        label = rec[f"langid_{key}"]
        assert detect_language(rec[f"{key}_text"]) == (
            label if label in {"zh", "en", "ja", "fr", "ko", "de"} else "en"
        )
    prompt_ids, target_ids = tts_phone_ids(
        rec["prompt_text"], rec["target_text"], rec["prompt_language"], rec["target_language"]
    )
    assert prompt_ids == expected["prompt_ids"]
    assert target_ids == expected["target_ids"]
    assert prompt_ids + target_ids == expected["ids"]
    frames = target_length(
        rec["prompt_frames"], rec["prompt_text"], rec["target_text"], rec["target_seconds"]
    )
    assert frames == expected["target_len"]

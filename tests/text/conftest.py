"""Fixtures for the text front-end tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


def _check_g2p_cases() -> None:
    """A missing, empty or malformed golden cases file ($METIS_G2P_CASES or the fixtures copy)
    fails loudly: with no records the golden tests would silently test nothing."""
    default = Path(__file__).resolve().parents[1] / "fixtures" / "g2p" / "cases.jsonl"
    path = Path(os.environ.get("METIS_G2P_CASES", default))
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        records = [json.loads(ln) for ln in lines]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise pytest.UsageError(f"g2p golden cases {path}: unreadable ({exc})") from None
    bad = [i + 1 for i, r in enumerate(records) if not (isinstance(r, dict) and "id" in r and "kind" in r)]
    if bad:
        raise pytest.UsageError(f"g2p golden cases {path}: lines {bad[:5]} lack 'id'/'kind'")
    if not any(r["kind"] in ("g2p", "tts") for r in records):
        raise pytest.UsageError(f"g2p golden cases {path}: no g2p or tts record (empty or wrong file)")


_check_g2p_cases()


@pytest.fixture(scope="session")
def zh_resources() -> Path:
    """The Chinese lexicon and polyphone model, fetched from PyPI into the cache if needed.

    Fails (does not skip) when they cannot be obtained: the Chinese goldens must run.
    """
    from metis_cli.text import fetch_zh_frontend

    return fetch_zh_frontend()

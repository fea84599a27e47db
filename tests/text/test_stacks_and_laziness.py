"""Lazy imports, and the other espeak-ng stack checked in a subprocess (one library per process)."""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ["jieba", "cn2an", "pypinyin", "onnxruntime", "pyopenjtalk", "pykakasi", "metis_cli.text.chinese"]


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_english_does_not_import_chinese_or_japanese_stacks() -> None:
    code = (
        "import sys, json\n"
        "import metis_cli.text as t\n"
        "before = sorted(sys.modules)\n"
        "phones, ids = t.g2p('Hello world, this is English.', 'en')\n"
        "t.tts_phone_ids('A prompt.', 'A target.')\n"
        f"print(json.dumps({{'ids': ids, 'loaded': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ids"], "English produced no ids"
    assert out["loaded"] == []


def test_other_espeak_stack_in_subprocess() -> None:
    """Run the espeak goldens under the library the main session does not use."""
    from metis_cli.text import espeak_info

    active = espeak_info()["backend"]
    other = "bundled" if active == "system" else "system"
    if other == "system" and not ctypes.util.find_library("espeak-ng"):
        pytest.skip("no system libespeak-ng here; the bundled stack is the active one and is tested")
    env = {**os.environ, "METIS_ESPEAK": other}
    env.pop("ESPEAK_DATA_PATH", None)  # set in this process for the bundled data; not for the other
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/text/test_g2p_golden.py",
         "-k", "en- or fr- or de- or ko-"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " passed" in proc.stdout

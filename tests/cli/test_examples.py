"""The shell scripts in examples/ run against the tiny model bundle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(script: str, args: list[str], bundle: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, METIS_CHECKPOINT_DIR=str(bundle))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the venv's `metis`
    return subprocess.run(
        ["bash", str(EXAMPLES / script), *args], env=env, capture_output=True, text=True, timeout=600
    )


def _reports(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_enhance_folder(tiny_bundle, wav_factory, tmp_path):
    noisy = tmp_path / "noisy"
    noisy.mkdir()
    for i in range(2):
        wav_factory(f"noisy/n{i}.wav", 0.6, seed=i)
    (noisy / "broken.wav").write_text("x")
    res = _run("enhance_folder.sh", [str(noisy), str(tmp_path / "clean"), *FAST], tiny_bundle)
    assert res.returncode == 1, res.stderr  # one bad file: the others are still written
    reps = _reports(tmp_path / "clean" / "report.jsonl")
    assert sorted(r["status"] for r in reps) == ["error", "ok", "ok"]
    assert (tmp_path / "clean" / "n0.wav").is_file() and (tmp_path / "clean" / "n1.wav").is_file()
    (noisy / "broken.wav").unlink()
    again = _run("enhance_folder.sh", [str(noisy), str(tmp_path / "clean"), *FAST], tiny_bundle)
    assert again.returncode == 0, again.stderr  # re-run after fixing: the rest is skipped
    assert [r["status"] for r in _reports(tmp_path / "clean" / "report.jsonl")] == ["skipped", "skipped"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_vc_manifest(tiny_bundle, wav_factory, tmp_path):
    ref = wav_factory("ref.wav", 0.8)
    srcs = [str(wav_factory(f"s{i}.wav", 0.6, seed=i + 1)) for i in range(2)]
    res = _run("vc_manifest.sh", [str(ref), str(tmp_path / "out"), *srcs, "--", *FAST], tiny_bundle)
    assert res.returncode == 0, res.stderr
    assert [r["status"] for r in _reports(tmp_path / "out" / "report.jsonl")] == ["ok", "ok"]
    assert (tmp_path / "out" / "s0.vc.wav").is_file()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_tts_from_text_file(tiny_bundle, wav_factory, tmp_path):
    prompt = wav_factory("spk.wav", 0.8)
    lines = tmp_path / "lines.txt"
    lines.write_text("Hello there.\n\nGood morning to you.\n")
    res = _run(
        "tts_from_text_file.sh",
        [str(lines), str(prompt), "A short prompt.", str(tmp_path / "tts"), *FAST],
        tiny_bundle,
    )
    assert res.returncode == 0, res.stderr
    reps = _reports(tmp_path / "tts" / "report.jsonl")
    assert [Path(r["output"]).name for r in reps] == ["line_0001.wav", "line_0002.wav"]

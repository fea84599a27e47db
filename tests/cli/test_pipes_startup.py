"""Pipes and start-up (docs/CLI.md): audio inputs from a pipe ("-", /dev/stdin, a FIFO) are read
into memory and give the same output as the file; --help, --version and usage errors are
answered without importing torch."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import soundfile as sf

from tests.conftest import FAST, speechlike

METIS = [sys.executable, "-m", "metis_cli"]


def env(bundle: Path | None = None) -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    if bundle is not None:
        e["METIS_CHECKPOINT_DIR"] = str(bundle)
    return e


def _wav(path: Path, seconds: float, seed: int, fmt: str = "WAV") -> Path:
    sf.write(path, speechlike(seconds, seed=seed), 24_000, format=fmt)
    return path


def _run(args: list[str], bundle: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run([*METIS, *args, *FAST, "--seed", "5", "-q"], input=stdin, capture_output=True,
                         env=env(bundle), timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    return res


def _feed_fifo(fifo: Path, data: bytes) -> threading.Thread:
    def write() -> None:
        with open(fifo, "wb") as f:  # blocks until metis opens the FIFO for reading
            f.write(data)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


# (task, the file arguments with {a} for the piped input, which kind of pipe)
CASES = [
    ("enhance", ["{a}"], "dash"),
    pytest.param("enhance", ["{a}"], "fifo", marks=pytest.mark.slow),
    pytest.param("tse", ["{a}", "{b}"], "devstdin", marks=pytest.mark.slow),
    pytest.param("vc", ["{b}", "{a}"], "fifo", marks=pytest.mark.slow),
    pytest.param(
        "tts",
        ["-p", "{a}", "-t", "Hello there.", "--prompt-text", "A prompt."],
        "dash",
        marks=pytest.mark.slow,
    ),  # fmt: skip
]


@pytest.mark.parametrize(("task", "args", "kind"), CASES)
def test_audio_from_a_pipe_gives_the_files_output(tiny_bundle, tmp_path, task, args, kind):
    a = _wav(tmp_path / "a.flac", 1.2, seed=0, fmt="FLAC")
    b = _wav(tmp_path / "b.wav", 1.0, seed=1)
    from_file = [x.format(a=a, b=b) for x in args]
    _run([task, *from_file, "-o", str(tmp_path / "file.wav")], tiny_bundle)
    stdin = None
    if kind == "fifo":
        name = tmp_path / "pipe.flac"
        os.mkfifo(name)
        feeder = _feed_fifo(name, a.read_bytes())
    else:
        name, stdin = ("-" if kind == "dash" else "/dev/stdin"), a.read_bytes()
    piped = [x.format(a=name, b=b) for x in args]
    _run([task, *piped, "-o", str(tmp_path / "pipe.wav")], tiny_bundle, stdin=stdin)
    if kind == "fifo":
        feeder.join(timeout=60)
    assert (tmp_path / "pipe.wav").read_bytes() == (tmp_path / "file.wav").read_bytes()


def test_stdin_input_without_an_output_or_twice_is_a_usage_error(tmp_path):
    res = subprocess.run([*METIS, "enhance", "-"], input=b"", capture_output=True, env=env(), timeout=120)
    assert res.returncode == 2 and "give -o FILE" in res.stderr.decode()
    cmd = [*METIS, "vc", "-", "-", "-o", str(tmp_path / "o.wav")]
    res = subprocess.run(cmd, input=b"", capture_output=True, env=env(), timeout=120)
    assert res.returncode == 2 and "read only once" in res.stderr.decode()


def test_data_that_is_not_audio_on_stdin_is_one_line(tmp_path):
    res = subprocess.run([*METIS, "enhance", "-", "-o", str(tmp_path / "o.wav")], input=b"not audio",
                         capture_output=True, env=env(), timeout=120)  # fmt: skip
    err = res.stderr.decode()
    assert (
        res.returncode == 1 and err.startswith("metis: error: stdin:") and len(err.strip().splitlines()) == 1
    )


PROBE = """
import sys
sys.argv = ["metis", *sys.argv[1:]]
from metis_cli.__main__ import main
try:
    main()
except SystemExit as exc:
    code = exc.code
sys.stderr.write(f"\\nexit={code} torch={'torch' in sys.modules}\\n")
"""

NO_TORCH = [
    ["--help"],
    ["--version"],
    *[
        [cmd, "--help"]
        for cmd in (
            "enhance",
            "tse",
            "vc",
            "tts",
            "l2s",
            "g2p",
            "finetune",
            "pretrain",
            "serve",
            "models",
            "results",
            "ray",
        )
    ],  # fmt: skip
    ["enhance"],
    ["tse", "a.wav"],
    ["vc", "a.wav"],
    ["tts", "-t", "hi"],
    ["l2s"],
    ["enhance", "a.wav", "--bogus"],
    ["tts", "--duration", "x"],
    ["enhance", "a.wav", "--resume"],
    ["bogus"],
]


@pytest.mark.parametrize("args", NO_TORCH, ids=" ".join)
def test_help_version_and_usage_errors_import_no_torch(tmp_path, args):
    res = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env(),
                         cwd=tmp_path, timeout=120)  # fmt: skip
    last = res.stderr.strip().splitlines()[-1]
    expected = 0 if ("--help" in args or "--version" in args) else 2
    assert last == f"exit={expected} torch=False", res.stderr[-2000:]

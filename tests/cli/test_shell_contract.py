"""The contract with the shell (docs/CLI.md), exercised through real `metis` processes on the tiny
bundle: stdout carries results only (also under a terminal), signals and closed pipes leave no
partial files, `-o -` and `--text-file -`, names that look like patterns or markup.
"""

from __future__ import annotations

import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import FAST, speechlike


def env(bundle: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.update(METIS_CHECKPOINT_DIR=str(bundle), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return e


METIS = [sys.executable, "-m", "metis_cli.cli"]


def wav(path: Path, seconds: float, seed: int = 0) -> Path:
    sf.write(path, speechlike(seconds, seed=seed), 24_000)
    return path


def test_results_reach_a_redirected_stdout_when_stderr_is_a_terminal(tiny_bundle, tmp_path):
    """With the progress bar drawn on a terminal, the JSON lines still go to stdout (a pipe)."""
    a, b = wav(tmp_path / "a.wav", 0.6), wav(tmp_path / "b.wav", 0.7, seed=1)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*METIS, "enhance", str(a), str(b), "-o", str(tmp_path / "o"), "--json", *FAST],
        stdout=subprocess.PIPE,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env={**env(tiny_bundle), "TERM": "xterm", "COLUMNS": "100"},
    )
    os.close(slave)
    terminal: list[bytes] = []

    def drain() -> None:  # read the terminal side while the child runs: a full pty buffer blocks it
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not chunk:
                return
            terminal.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out = proc.stdout.read()
    proc.wait(timeout=300)
    reader.join(timeout=60)
    os.close(master)
    seen = b"".join(terminal)
    assert proc.returncode == 0
    lines = [json.loads(x) for x in out.decode().splitlines()]
    assert [r["status"] for r in lines] == ["ok", "ok"]
    assert b"metis se" in seen  # the progress display was on the terminal (stderr), not stdout
    assert b'"status"' not in seen


def test_sigterm_during_a_long_input_leaves_no_partial_file(tiny_bundle, tmp_path):
    long = wav(tmp_path / "long.wav", 40.0)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [
            *METIS,
            "enhance",
            str(long),
            "-o",
            str(out / "long.wav"),
            "--chunk-seconds",
            "3",
            "--overlap-seconds",
            "0.5",
            "--context-seconds",
            "1",
            "--quiet",
            *FAST,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(tiny_bundle),
    )
    deadline = time.time() + 120
    while not list(out.glob(".metis-*.tmp")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)  # wait until the streamed output's temporary file exists (first chunk done)
    assert list(out.glob(".metis-*.tmp")), "the long job never started writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert list(out.iterdir()) == []  # no temporary file, no partial output
    assert b"Traceback" not in err


def test_closed_stdout_stops_quietly_and_finished_outputs_are_complete(tiny_bundle, tmp_path):
    files = [wav(tmp_path / f"{n}.wav", 0.6, seed=i) for i, n in enumerate("abc")]
    out = tmp_path / "o"
    cmd = " ".join([*METIS, "enhance", *map(str, files), "-o", str(out), *FAST])
    res = subprocess.run(
        ["bash", "-c", f'{cmd} | head -1; echo "rc=${{PIPESTATUS[0]}}" >&2'],
        capture_output=True,
        env=env(tiny_bundle),
        timeout=180,
    )
    assert res.stdout.decode().strip() == str(out / "a.wav")
    assert b"rc=141" in res.stderr and b"Traceback" not in res.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written[0] == "a.wav" and not [n for n in written if n.startswith(".")]
    for name in written:
        data, sr = sf.read(out / name)
        assert sr == 24_000 and len(data) > 0


def test_dash_output_writes_the_wav_to_stdout_and_text_file_dash_reads_stdin(tiny_bundle, tmp_path):
    prompt = wav(tmp_path / "spk.wav", 1.0)
    res = subprocess.run(
        [*METIS, "tts", "--prompt", str(prompt), "--prompt-text", "A short prompt.", "--text-file", "-",
         "--language", "en", "--prompt-language", "en", "-o", "-", "--seed", "3", *FAST],
        input=b"Hello there, general.",
        capture_output=True,
        env=env(tiny_bundle),
        timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    data, sr = sf.read(io.BytesIO(res.stdout))
    assert sr == 24_000 and data.ndim == 1 and len(data) > 0
    assert list(tmp_path.iterdir()) == [prompt]  # no file named "-"


def test_file_names_are_data_never_patterns_or_markup(tiny_bundle, tmp_path):
    odd = wav(tmp_path / "take[1].wav", 0.6)
    wav(tmp_path / "take1.wav", 0.6)  # what take[1].wav would match as a pattern
    (tmp_path / "x[").mkdir()
    marked = wav(tmp_path / "x[" / "b][bold].wav", 0.6, seed=1)  # the path reads ".../x[/b][bold].wav"
    res = subprocess.run(
        [*METIS, "enhance", str(odd), str(marked), *FAST],
        capture_output=True,
        env=env(tiny_bundle),
        timeout=120,
    )
    assert res.returncode == 0, res.stderr.decode()
    outs = [str(tmp_path / "take[1].enhanced.wav"), str(tmp_path / "x[" / "b][bold].enhanced.wav")]
    assert res.stdout.decode().splitlines() == outs
    assert f"ok: {outs[1]} (seed" in res.stderr.decode()  # printed literally, not as markup


def test_folder_input_and_usage_errors_are_one_line_exit_2(tiny_bundle, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    wav(folder / "b.wav", 0.6)
    wav(folder / "a.wav", 0.6, seed=1)
    res = subprocess.run(
        [*METIS, "enhance", str(folder), "-o", str(tmp_path / "o"), "--json", *FAST],
        capture_output=True,
        env=env(tiny_bundle),
        timeout=120,
    )
    assert res.returncode == 0, res.stderr.decode()
    assert [json.loads(x)["inputs"]["input"] for x in res.stdout.decode().splitlines()] == [
        str(folder / "a.wav"),
        str(folder / "b.wav"),
    ]
    for args, msg in (
        (["--steps", "0"], "metis: error: --steps: must be >= 1 (got 0)"),
        (["--attention", "flash"], "metis: error: --attention: must be one of eager, sdpa"),
        (["--seed", "99999999999999999999"], "metis: error: --seed: must be within 0..2**63-1"),
        (["--temperature", "nan"], "metis: error: --temperature: must be a finite number"),
        (["-o", str(tmp_path / "x.aac")], "cannot write .aac audio"),
    ):
        bad = subprocess.run(
            [*METIS, "enhance", str(folder / "a.wav"), *args],
            capture_output=True,
            env=env(tiny_bundle),
            timeout=60,
        )
        err = bad.stderr.decode()
        assert bad.returncode == 2 and msg in err and len(err.strip().splitlines()) == 1, err
        assert bad.stdout == b""


def test_full_filesystem_fails_that_job_and_the_batch_goes_on(tiny_bundle, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(small)]).returncode
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount permission)")
    try:
        a, b = wav(tmp_path / "a.wav", 1.0), wav(tmp_path / "b.wav", 1.0, seed=1)
        m = tmp_path / "jobs.jsonl"
        m.write_text(
            json.dumps({"input": str(a), "output": str(small / "a.wav")})
            + "\n"
            + json.dumps({"input": str(b), "output": str(tmp_path / "b.out.wav")})
            + "\n"
        )
        res = subprocess.run(
            [*METIS, "enhance", "--manifest", str(m), "--json", *FAST],
            capture_output=True,
            env=env(tiny_bundle),
            timeout=120,
        )
        reps = [json.loads(x) for x in res.stdout.decode().splitlines()]
        assert res.returncode == 1 and [r["status"] for r in reps] == ["error", "ok"]
        assert str(small / "a.wav") in reps[0]["error"] and "\n" not in reps[0]["error"]
        assert b"Traceback" not in res.stderr
        assert list(small.iterdir()) == []  # no partial file on the full filesystem
        assert reps[0]["audio_seconds"] == pytest.approx(1.0)  # the input was read: its length is reported
    finally:
        subprocess.run(["umount", str(small)])


def test_manifest_rows_take_the_command_line_seed_and_reports_name_the_row(tiny_bundle, tmp_path):
    from typer.testing import CliRunner

    from metis_cli.cli import app

    prompt = wav(tmp_path / "spk.wav", 1.0)
    m = tmp_path / "jobs.csv"
    m.write_text(
        "prompt,text,prompt_text,seed,language,prompt_language\n"
        f"{prompt},Hello there.,A short prompt.,,en,en\n"
        f"{prompt},Second line here.,A short prompt.,9,en,en\n"
        f"{tmp_path / 'missing.wav'},Third one.,A short prompt.,,en,en\n"
    )
    res = CliRunner().invoke(
        app,
        ["tts", "--manifest", str(m), "-o", str(tmp_path / "out"), "--seed", "1", "--json", *FAST],
        env={"METIS_CHECKPOINT_DIR": str(tiny_bundle)},
        catch_exceptions=False,
    )
    reps = [json.loads(x) for x in res.stdout.splitlines()]
    assert res.exit_code == 1
    assert [r["seed"] for r in reps] == [1, 9, 1]
    assert [r["origin"] for r in reps] == [f"{m}:2", f"{m}:3", f"{m}:4"]
    assert reps[0]["text"] == "Hello there." and reps[0]["output"] == str(tmp_path / "out" / "tts-00001.wav")
    assert reps[2]["status"] == "error" and "missing.wav" in reps[2]["error"]
    assert reps[2]["audio_seconds"] is None  # the input was never read


def test_numpy_inputs_and_error_classes_in_the_python_api(tiny_bundle, tmp_path):
    import metis_cli
    from metis_cli import api

    pipe = api.load("se", checkpoint_dir=tiny_bundle, offline=True, device="cpu", steps=2, s2a_steps="2,2")
    samples = speechlike(0.8)
    from_array = pipe(metis_cli.AudioArray(samples, 24_000, name="mem"), seed=4).wav
    path = wav(tmp_path / "a.wav", 0.8)
    np.testing.assert_array_equal(from_array, pipe(path, seed=4).wav)  # same audio, same seed, same output
    with pytest.raises(metis_cli.AudioError, match="missing.wav"):
        pipe(tmp_path / "missing.wav", seed=1)
    with pytest.raises(metis_cli.InputError, match="AudioArray"):
        pipe(samples)
    with pytest.raises(metis_cli.UsageError, match="unknown decoding option"):
        api.load("se", checkpoint_dir=tiny_bundle, stepz=3)
    with pytest.raises(metis_cli.UsageError, match="^steps: must be >= 1"):  # the API's name, no flag
        api.load("se", checkpoint_dir=tiny_bundle, steps=0)
    assert issubclass(metis_cli.MetisError, Exception) and issubclass(
        metis_cli.AudioError, metis_cli.MetisError
    )


def test_corrupt_config_overrides_is_one_line(tiny_bundle, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from metis_cli.cli import app

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "metis_config_overrides.json").write_text("{not json")
    a = wav(tmp_path / "a.wav", 0.6)
    res = CliRunner().invoke(app, ["enhance", str(a), *FAST], env={"METIS_CHECKPOINT_DIR": str(bundle)})
    assert res.exit_code == 1 and "unreadable config overrides" in res.stderr
    assert (
        len(res.stderr.strip().splitlines()) == 1
        and res.exception is None
        or isinstance(res.exception, SystemExit)
    )


def test_g2p_stops_quietly_on_a_closed_pipe(tmp_path):
    lines = "\n".join(["Hello there."] * 200) + "\n"
    cmd = " ".join([*METIS, "g2p", "--language", "en"])
    res = subprocess.run(
        ["bash", "-c", f'{cmd} | head -1; echo "rc=${{PIPESTATUS[0]}}" >&2'],
        input=lines.encode(),
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert res.stdout.decode().count("\n") == 1 and res.stdout.decode().startswith("en\t")
    assert b"rc=141" in res.stderr and b"Traceback" not in res.stderr and b"Error" not in res.stderr


# ---- issue 24: `-o -` into a shell redirection, odd names in a batch, two runs into one folder -----


def test_enhance_dash_output_redirected_to_a_file_with_a_relative_input(tiny_bundle, tmp_path):
    wav(tmp_path / "n0.wav", 0.6)
    cmd = " ".join([*METIS, "enhance", "n0.wav", "-o", "-", "-q", *FAST])
    res = subprocess.run(
        ["bash", "-c", f"{cmd} > o.wav"], cwd=tmp_path, capture_output=True, env=env(tiny_bundle), timeout=180
    )
    assert res.returncode == 0 and res.stderr == b"", res.stderr.decode()
    data, sr = sf.read(tmp_path / "o.wav")
    assert sr == 24_000 and len(data) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n0.wav", "o.wav"]


def test_names_that_cannot_be_read_fail_alone_and_print_escaped(tiny_bundle, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    wav(folder / "good.wav", 0.6)
    sf.write(os.path.join(os.fsencode(folder), b"caf\xe9.wav"), speechlike(0.6), 24_000)
    (folder / "loop.wav").symlink_to("loop.wav")
    (folder / "._good.wav").write_bytes(b"\x00\x05\x16\x07")
    out = tmp_path / "out"
    cafe = os.fsdecode(os.path.join(os.fsencode(folder), b"caf\xe9.wav"))
    for args in ([str(folder)], [str(folder / "good.wav"), cafe, str(folder / "loop.wav")]):
        res = subprocess.run(
            [*METIS, "enhance", *args, "-o", str(out), "--json", "--overwrite", *FAST],
            capture_output=True,
            env=env(tiny_bundle),
            timeout=180,
        )
        err = res.stderr.decode()
        assert res.returncode == 1 and "Traceback" not in err, err
        reps = {Path(r["inputs"]["input"]).name: r for r in map(json.loads, res.stdout.decode().splitlines())}
        assert sorted(reps) == ["caf\\xe9.wav", "good.wav", "loop.wav"]  # no ._good.wav
        assert reps["good.wav"]["status"] == "ok" and (out / "good.wav").is_file()
        assert reps["loop.wav"]["error"] == f"{folder / 'loop.wav'}: symbolic link loop"
        assert reps["caf\\xe9.wav"]["error"].endswith(
            "caf\\xe9.wav: the file name is not valid UTF-8 (rename the file)"
        )
        assert (
            f"failed: {folder}/caf\\xe9.wav: the file name is not valid UTF-8" in err
        )  # as `ls -b` shows it


# A run whose placement waits, in a real process, until the test says go: the test makes the
# second run write the same output in between (no timing involved).
_PAUSED_RUN = """
import os, runpy, sys
from metis_cli.media import audio
ready, go = int(os.environ["READY_FD"]), int(os.environ["GO_FD"])
place = audio.place_file
def paused(tmp, path, replace=True):
    os.write(ready, b"r")
    if os.read(go, 1) != b"g":
        raise SystemExit(99)
    return place(tmp, path, replace)
audio.place_file = paused
sys.argv = ["metis", *sys.argv[1:]]
runpy.run_module("metis_cli.cli", run_name="__main__")
"""


def test_two_runs_into_one_folder_never_replace_each_others_outputs(tiny_bundle, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    wav(inputs / "a.wav", 0.6)
    wav(inputs / "b.wav", 0.7, seed=1)
    out = tmp_path / "out"
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    first = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_RUN, "enhance", str(inputs / "a.wav"), "-o", str(out),
         "--seed", "1", "--json", *FAST],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(ready_w, go_r),
        env={**env(tiny_bundle), "READY_FD": str(ready_w), "GO_FD": str(go_r)},
    )  # fmt: skip
    os.close(ready_w)
    os.close(go_r)
    try:
        ready, _, _ = select.select([ready_r], [], [], 300)  # the first run has planned and generated
        assert ready and os.read(ready_r, 1) == b"r", first.communicate(timeout=60)
        second = subprocess.run(
            [*METIS, "enhance", str(inputs), "-o", str(out), "--seed", "2", "--json", *FAST],
            capture_output=True,
            env=env(tiny_bundle),
            timeout=180,
        )
        assert second.returncode == 0, second.stderr.decode()
        theirs = (out / "a.wav").read_bytes()
        os.write(go_w, b"g")
        stdout, stderr = first.communicate(timeout=120)
    finally:
        os.close(go_w)
        os.close(ready_r)
        if first.poll() is None:
            first.kill()
    assert first.returncode == 1, stderr.decode()
    (rep,) = [json.loads(x) for x in stdout.decode().splitlines()]
    assert rep["status"] == "error" and rep["seed"] == 1
    why = "exists: another run wrote it while this job ran; use --overwrite to replace it"
    assert rep["error"].endswith(f"{out / 'a.wav'}: cannot write the output ({why})")
    assert (out / "a.wav").read_bytes() == theirs  # the second run's output is kept, whole
    assert sorted(p.name for p in out.iterdir()) == ["a.wav", "b.wav"]  # no temporary file left
    assert b"Traceback" not in stderr

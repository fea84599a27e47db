"""End-to-end tests of the `metis` commands on the tiny random model bundle.

Every command runs through exactly the code path the official files take (`--checkpoint-dir`
pointing at a tree in the official layout).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from metis_cli.cli import app
from tests.conftest import FAST

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "wav"


def run(args: list[str], bundle: Path | None = None, env: dict | None = None):
    env = dict(env or {})
    if bundle is not None:
        env["METIS_CHECKPOINT_DIR"] = str(bundle)
    return CliRunner().invoke(app, args, env=env, catch_exceptions=False)


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def read(path: Path) -> tuple[np.ndarray, int]:
    wav, sr = sf.read(path, dtype="float32")
    return wav, sr


# -- enhance ------


def test_enhance_batch_json_and_errors(tiny_bundle, wav_factory, tmp_path):
    good = wav_factory("good.wav", 1.2)
    other = wav_factory("other.wav", 0.8, sr=16_000, seed=1)
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 24_000)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(4800, np.nan, np.float32), 24_000, subtype="FLOAT")
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(300, np.float32), 16_000)  # < 400 samples at 16 kHz: no SSL frame
    res = run(
        [
            "enhance",
            str(good),
            str(other),
            str(bad),
            str(empty),
            str(nan),
            str(short),
            str(tmp_path / "missing.wav"),
            "--seed",
            "5",
            "--json",
            *FAST,
        ],
        tiny_bundle,
    )
    assert res.exit_code == 1, res.stderr
    reps = json_lines(res.stdout)
    assert [Path(r["inputs"]["input"]).name for r in reps] == [
        "good.wav",
        "other.wav",
        "bad.wav",
        "empty.wav",
        "nan.wav",
        "short.wav",
        "missing.wav",
    ]
    assert [r["status"] for r in reps] == ["ok", "ok"] + ["error"] * 5
    for r in reps:
        assert set(r) >= {
            "inputs",
            "output",
            "seed",
            "steps",
            "audio_seconds",
            "processing_seconds",
            "status",
            "error",
        }
        assert r["seed"] == 5 and r["steps"] == 2
    errors = [r["error"] for r in reps[2:]]
    for name, err in zip(
        ["bad.wav", "empty.wav", "nan.wav", "short.wav", "missing.wav"], errors, strict=True
    ):
        assert name in err and "\n" not in err
    # outputs: next to the input with a suffix, 24 kHz, one frame (480 samples) per semantic frame
    for r in reps[:2]:
        out = Path(r["output"])
        assert out.name.endswith(".enhanced.wav") and out.is_file()
        wav, sr = read(out)
        assert sr == 24_000 and len(wav) == 480 * r["info"]["acoustic_frames"]
        assert r["info"]["acoustic_frames"] == r["info"]["semantic_frames"]  # SE: no prompt
    assert not (tmp_path / "bad.enhanced.wav").exists()
    # summary of failures on stderr, one line each
    assert "5 of 7 job(s) failed" in res.stderr


def test_enhance_outdir_skip_overwrite_and_determinism(tiny_bundle, wav_factory, tmp_path):
    a = wav_factory("a.wav", 1.0)
    outdir = tmp_path / "out"
    first = run(["enhance", str(a), "-o", str(outdir), "--seed", "7", "-q", *FAST], tiny_bundle)
    assert first.exit_code == 0, first.stderr
    assert first.stdout.strip() == str(outdir / "a.wav") and first.stderr == ""
    wav1, _ = read(outdir / "a.wav")
    again = run(["enhance", str(a), "-o", str(outdir), "--seed", "7", *FAST], tiny_bundle)
    assert again.exit_code == 1 and "exists" in again.stderr
    skip = run(["enhance", str(a), "-o", str(outdir), "--skip-existing", "--json", *FAST], tiny_bundle)
    assert skip.exit_code == 0 and json_lines(skip.stdout)[0]["status"] == "skipped"
    over = run(["enhance", str(a), "-o", str(outdir), "--overwrite", "--seed", "7", *FAST], tiny_bundle)
    assert over.exit_code == 0
    wav2, _ = read(outdir / "a.wav")
    np.testing.assert_array_equal(wav1, wav2)  # same seed, same output
    other = run(["enhance", str(a), "-o", str(outdir), "--overwrite", "--seed", "8", *FAST], tiny_bundle)
    assert other.exit_code == 0
    assert not np.array_equal(read(outdir / "a.wav")[0], wav1)  # another seed, another sample


def test_enhance_glob_and_output_never_overwrites_input(tiny_bundle, wav_factory, tmp_path):
    wav_factory("x1.wav", 0.6)
    wav_factory("x2.wav", 0.6, seed=2)
    res = run(["enhance", str(tmp_path / "x*.wav"), "--json", *FAST], tiny_bundle)
    assert res.exit_code == 0, res.stderr
    assert sorted(Path(r["output"]).name for r in json_lines(res.stdout)) == [
        "x1.enhanced.wav",
        "x2.enhanced.wav",
    ]
    # -o into the input's own folder would give the input's own name: refused, input kept
    before = (tmp_path / "x1.wav").read_bytes()
    clash = run(
        [
            "enhance",
            str(tmp_path / "x1.wav"),
            str(tmp_path / "x2.wav"),
            "-o",
            str(tmp_path),
            "--overwrite",
            *FAST,
        ],
        tiny_bundle,
    )
    assert clash.exit_code == 1 and "overwrite an input" in clash.stderr
    assert (tmp_path / "x1.wav").read_bytes() == before


def test_unwritable_output_folder(tiny_bundle, wav_factory, tmp_path):
    """An output under a regular file cannot be written, even by root (as CI runs)."""
    a, b = wav_factory("a.wav", 0.6), wav_factory("b.wav", 0.6, seed=1)
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    m = tmp_path / "jobs.jsonl"
    m.write_text(
        json.dumps({"input": str(a), "output": str(blocker / "a.wav")})
        + "\n"
        + json.dumps({"input": str(b), "output": str(tmp_path / "b.out.wav")})
        + "\n"
    )
    res = run(["enhance", "--manifest", str(m), "--json", *FAST], tiny_bundle)
    reps = json_lines(res.stdout)
    assert res.exit_code == 1 and [r["status"] for r in reps] == ["error", "ok"]
    assert "cannot create the output folder" in reps[0]["error"]
    assert str(blocker / "a.wav") in reps[0]["error"]


def test_batch_size_gives_batch1_results(tiny_bundle, wav_factory, tmp_path):
    files = [str(wav_factory(f"b{i}.wav", 0.5 + 0.3 * i, seed=i)) for i in range(3)]
    cpu = ["--device", "cpu"]  # equality with batch 1 is asserted: the CPU, whatever the machine has
    one = run(["enhance", *files, "-o", str(tmp_path / "one"), "--seed", "3", *cpu, *FAST], tiny_bundle)
    three = run(
        ["enhance", *files, "-o", str(tmp_path / "three"), "--seed", "3", "--batch-size", "3", *cpu, *FAST],
        tiny_bundle,
    )
    assert one.exit_code == 0 and three.exit_code == 0, three.stderr
    for i in range(3):
        a, _ = read(tmp_path / "one" / f"b{i}.wav")
        b, _ = read(tmp_path / "three" / f"b{i}.wav")
        assert a.shape == b.shape
        # identical tokens; waveforms equal up to PCM-16 rounding of float-rounding differences
        assert np.max(np.abs(a - b)) <= 2 / 32768


# -- pair tasks and manifests ------


def test_tse_and_vc_output_lengths(tiny_bundle, wav_factory, tmp_path):
    mix = wav_factory("mix.wav", 1.5, seed=3)
    enrol = wav_factory("enrol.wav", 1.0, seed=4)
    for task in ("tse", "vc"):
        out = tmp_path / f"{task}.wav"
        res = run([task, str(mix), str(enrol), "-o", str(out), "--seed", "1", "--json", *FAST], tiny_bundle)
        assert res.exit_code == 0, res.stderr
        rep = json_lines(res.stdout)[0]
        wav, sr = read(out)
        # spec §1.4: target = SSL([prompt ; source]) frames - prompt frames; output = frames * 480
        assert sr == 24_000 and len(wav) == 480 * rep["info"]["acoustic_frames"]
        assert abs(len(wav) / sr - 1.5) < 0.1


def test_vc_rejects_too_short_reference(tiny_bundle, wav_factory, tmp_path):
    src = wav_factory("src.wav", 1.0)
    ref = tmp_path / "ref.wav"
    sf.write(ref, np.full(400, 0.1, np.float32), 24_000)  # < 467 samples: no acoustic frame
    res = run(["vc", str(src), str(ref), "-o", str(tmp_path / "o.wav"), *FAST], tiny_bundle)
    assert res.exit_code == 1 and "ref.wav" in res.stderr and "too short" in res.stderr
    assert not (tmp_path / "o.wav").exists()


def test_vc_manifest_jsonl_and_csv(tiny_bundle, wav_factory, tmp_path):
    s1, s2, ref = (
        wav_factory("s1.wav", 0.8),
        wav_factory("s2.wav", 0.7, seed=1),
        wav_factory("r.wav", 0.9, seed=2),
    )
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        json.dumps({"source": str(s1), "reference": str(ref), "output": str(tmp_path / "o1.wav"), "seed": 1})
        + "\n"
        + json.dumps(
            {"source": str(tmp_path / "nope.wav"), "reference": str(ref), "output": str(tmp_path / "o2.wav")}
        )
        + "\n\n"
        + json.dumps(
            {"source": str(s2), "reference": str(ref), "output": str(tmp_path / "o3.wav"), "seed": 3}
        )
        + "\n"
    )
    res = run(["vc", "--manifest", str(jobs), "--json", *FAST], tiny_bundle)
    assert res.exit_code == 1
    reps = json_lines(res.stdout)
    assert [r["status"] for r in reps] == ["ok", "error", "ok"]
    assert [r["seed"] for r in reps][0::2] == [1, 3]
    csv_jobs = tmp_path / "jobs.csv"
    csv_jobs.write_text(f"source,reference,output,seed\n{s1},{ref},{tmp_path / 'c1.wav'},1\n")
    res = run(["vc", "--manifest", str(csv_jobs), *FAST], tiny_bundle)
    assert res.exit_code == 0, res.stderr
    np.testing.assert_array_equal(read(tmp_path / "c1.wav")[0], read(tmp_path / "o1.wav")[0])


def test_manifest_bad_lines_fail_and_unreadable_manifests_are_usage_errors(tiny_bundle, tmp_path):
    bad = tmp_path / "jobs.jsonl"
    bad.write_text("{not json}\n")
    res = run(["vc", "--manifest", str(bad)], tiny_bundle)
    assert res.exit_code == 1 and "jobs.jsonl:1: not valid JSON" in res.stderr
    res = run(["vc", "--manifest", str(tmp_path / "absent.jsonl")], tiny_bundle)
    assert res.exit_code == 2 and "manifest not found" in res.stderr
    (tmp_path / "empty.jsonl").write_text("\n\n")
    res = run(["vc", "--manifest", str(tmp_path / "empty.jsonl")], tiny_bundle)
    assert res.exit_code == 2 and "no jobs" in res.stderr


# -- TTS ------


def test_tts_duration_and_length_rule(tiny_bundle, wav_factory, tmp_path):
    prompt = wav_factory("spk.wav", 1.0)
    out = tmp_path / "tts.wav"
    res = run(
        [
            "tts",
            "--prompt",
            str(prompt),
            "--prompt-text",
            "A short prompt.",
            "--text",
            "Hello there.",
            "--duration",
            "0.8",
            "-o",
            str(out),
            "--seed",
            "2",
            "--json",
            *FAST,
        ],
        tiny_bundle,
    )
    assert res.exit_code == 0, res.stderr
    rep = json_lines(res.stdout)[0]
    assert rep["info"]["semantic_frames"] == 40  # int(0.8 * 50)
    # S2A generates [prompt ; target] - acoustic prompt frames (spec §1.4)
    assert len(read(out)[0]) == 480 * rep["info"]["acoustic_frames"]
    # the byte-ratio rule: prompt frames * bytes(target) // bytes(prompt)
    out2 = tmp_path / "tts2.wav"
    res = run(
        [
            "tts",
            "--prompt",
            str(prompt),
            "--prompt-text",
            "A short prompt.",
            "--text",
            "Hi.",
            "-o",
            str(out2),
            "--json",
            *FAST,
        ],
        tiny_bundle,
    )
    assert res.exit_code == 0, res.stderr
    assert json_lines(res.stdout)[0]["info"]["semantic_frames"] == 49 * len(b"Hi.") // len(b"A short prompt.")


def test_tts_text_file_and_omni(tiny_bundle, wav_factory, tmp_path):
    prompt = wav_factory("spk.wav", 1.0)
    text = tmp_path / "text.txt"
    text.write_text("Good morning.\n")
    res = run(
        [
            "tts",
            "--text-file",
            str(text),
            "--prompt",
            str(prompt),
            "--prompt-text",
            "A prompt.",
            "--model",
            "metis-omni",
            "-o",
            str(tmp_path / "o.wav"),
            *FAST,
        ],
        tiny_bundle,
    )
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "o.wav").is_file()


def test_tts_bad_text_and_language(tiny_bundle, wav_factory, tmp_path):
    prompt = wav_factory("spk.wav", 1.0)
    res = run(
        [
            "tts",
            "--prompt",
            str(prompt),
            "--prompt-text",
            "A prompt.",
            "--text",
            "   ",
            "-o",
            str(tmp_path / "o.wav"),
            *FAST,
        ],
        tiny_bundle,
    )
    assert res.exit_code == 1 and "empty" in res.stderr
    assert not (tmp_path / "o.wav").exists()
    res = run(
        ["tts", "--prompt", str(prompt), "--prompt-text", "A prompt.", "--text", "Hi.", "--language", "xx"],
        tiny_bundle,
    )
    assert res.exit_code == 2


# -- L2S ------


def _mouth_video(path: Path, frames: int = 20, fps: int = 25) -> Path:
    from tests.l2s.synth import write_video

    rng = np.random.default_rng(0)
    write_video(path, (rng.random((frames, 96, 96, 3)) * 255).astype(np.uint8), fps)
    return path


def test_l2s_precropped_video(tiny_bundle, wav_factory, tmp_path):
    video = _mouth_video(tmp_path / "mouth.mkv")
    prompt = wav_factory("spk.wav", 0.6)
    vis = str(tiny_bundle / "visual" / "model.pth")
    out = tmp_path / "l2s.wav"
    res = run(["l2s", str(video), "--visual-checkpoint", vis, "-o", str(out), "--json", *FAST], tiny_bundle)
    assert res.exit_code == 0, res.stderr
    rep = json_lines(res.stdout)[0]
    assert rep["info"]["semantic_frames"] == 2 * 20  # 25 fps x2 -> 50 Hz, no prompt
    assert len(read(out)[0]) == 480 * 40  # the video's duration
    res = run(
        [
            "l2s",
            str(video),
            "--prompt",
            str(prompt),
            "--visual-checkpoint",
            vis,
            "-o",
            str(tmp_path / "p.wav"),
            *FAST,
        ],
        tiny_bundle,
    )
    assert res.exit_code == 0, res.stderr


def test_l2s_errors(tiny_bundle, tmp_path):
    video = _mouth_video(tmp_path / "mouth.mkv")
    res = run(["l2s", str(video), "-o", str(tmp_path / "a.wav"), *FAST], tiny_bundle)
    assert res.exit_code == 1 and "--visual-checkpoint" in res.stderr
    not_video = tmp_path / "clip.mp4"
    not_video.write_text("nothing")
    vis = str(tiny_bundle / "visual" / "model.pth")
    res = run(
        ["l2s", str(not_video), "--visual-checkpoint", vis, "-o", str(tmp_path / "b.wav"), *FAST], tiny_bundle
    )
    assert res.exit_code == 1 and "clip.mp4" in res.stderr
    # a full-frame video (not a mouth crop) whose landmarks say "no face" in every frame
    from tests.l2s.synth import write_video

    face = write_video(tmp_path / "face.mkv", np.zeros((12, 120, 160, 3), np.uint8), 25)
    lm = tmp_path / "lm.npy"
    np.save(lm, np.full((12, 4, 2), np.nan))
    res = run(
        [
            "l2s",
            str(face),
            "--landmarks",
            str(lm),
            "--visual-checkpoint",
            vis,
            "-o",
            str(tmp_path / "c.wav"),
            *FAST,
        ],
        tiny_bundle,
    )
    assert res.exit_code == 1 and "face" in res.stderr.lower()
    assert len([ln for ln in res.stderr.splitlines() if "face.mkv" in ln]) >= 1
    # without mediapipe and without landmarks: a clear error, not a traceback
    res = run(
        ["l2s", str(face), "--visual-checkpoint", vis, "-o", str(tmp_path / "d.wav"), *FAST], tiny_bundle
    )
    assert res.exit_code == 1 and "--landmarks" in res.stderr


# -- models, offline, usage ------


def test_models_lists_cards_and_presence(tiny_bundle):
    res = run(["models", "--json"], tiny_bundle)
    assert res.exit_code == 0, res.stderr
    cards = {c["name"]: c for c in json_lines(res.stdout)}
    assert {"maskgct-t2s", "metis-se-lora32", "metis-omni", "w2v-bert-2.0"} <= set(cards)
    assert cards["metis-se-lora32"]["default_for"] == "se"
    # every file of the tiny bundle is found (amphion/metis on disk vs amphion/Metis in the card)
    assert all(f["path"] for f in cards["metis-se-lora32"]["files"])


def test_offline_missing_model_names_the_fix(wav_factory, tmp_path):
    a = wav_factory("a.wav", 0.5)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "METIS_CHECKPOINT_DIR": ""}
    b = wav_factory("b.wav", 0.5, seed=1)
    res = run(["enhance", str(a), str(b)], env=env)
    assert res.exit_code == 1 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1  # the run stops at the first missing file: one line, no traceback
    assert "not in the Hugging Face cache" in lines[0] and "`metis download metis-se-lora32`" in lines[0]


def test_usage_errors_exit_2(tiny_bundle, wav_factory):
    a = wav_factory("a.wav", 0.5)
    assert run(["enhance"], tiny_bundle).exit_code == 2
    assert run(["enhance", str(a), "--model", "no-such-model"], tiny_bundle).exit_code == 2
    assert run(["enhance", str(a), "--s2a-steps", "x"], tiny_bundle).exit_code == 2
    assert run(["vc", str(a)], tiny_bundle).exit_code == 2
    assert run(["enhance", str(a), "--dtype", "float16", "--device", "cpu"], tiny_bundle).exit_code == 2


def test_help_lists_every_command():
    res = run(["--help"])
    assert res.exit_code == 0
    for cmd in ("tts", "vc", "tse", "enhance", "l2s", "g2p", "download", "models", "doctor"):
        assert cmd in res.stdout


# -- Python API ------


def test_python_api(tiny_bundle, wav_factory):
    import metis_cli
    from tests.conftest import FAST_API

    se = metis_cli.load("se", checkpoint_dir=tiny_bundle, device="cpu", **FAST_API)
    a = wav_factory("a.wav", 0.7)
    r1, r2 = se(a, seed=4), se(a, seed=4)
    assert r1.sample_rate == 24_000 and r1.seed == 4 and r1.wav.dtype == np.float32
    np.testing.assert_array_equal(r1.wav, r2.wav)
    with pytest.raises(metis_cli.api.MetisError, match="no such audio file"):
        se(a.with_name("absent.wav"))


# -- long inputs ------


def test_enhance_long_input_in_chunks(tiny_bundle, wav_factory, tmp_path):
    long = wav_factory("long.wav", 12.0, sr=16_000)
    res = run(
        [
            "enhance",
            str(long),
            "-o",
            str(tmp_path / "out"),
            "--chunk-seconds",
            "4",
            "--overlap-seconds",
            "0.5",
            "--context-seconds",
            "1",
            "--seed",
            "1",
            "--json",
            *FAST,
        ],
        tiny_bundle,
    )
    assert res.exit_code == 0, res.stderr
    rep = json_lines(res.stdout)[0]
    wav, sr = read(tmp_path / "out" / "long.wav")
    assert rep["status"] == "ok" and sr == 24_000 and len(wav) == 12 * 24_000  # chunked: the input's length
    assert not [p for p in (tmp_path / "out").iterdir() if p.name != "long.wav"]  # no temp file left
    bad = run(["enhance", str(long), "--chunk-seconds", "100", *FAST], tiny_bundle)
    assert bad.exit_code == 2 and "chunk" in bad.stderr


def test_tts_long_text_is_split(tiny_bundle, wav_factory, tmp_path):
    prompt = wav_factory("spk.wav", 0.8)
    text = "The first sentence is here. The second one follows it. And a third one ends the text."
    res = run(
        [
            "tts",
            "--prompt",
            str(prompt),
            "--prompt-text",
            "A short prompt.",
            "--text",
            text,
            "--max-chars",
            "30",
            "-o",
            str(tmp_path / "o.wav"),
            "--json",
            *FAST,
        ],
        tiny_bundle,
    )
    assert res.exit_code == 0, res.stderr
    assert read(tmp_path / "o.wav")[0].size > 0


# -- the edges of issue 24: `-o -` for every command, usage errors, rejected rows ------


def _dash_args(task: str, d: Path, absolute: bool) -> list[str]:
    def p(name: str) -> str:
        return str(d / name) if absolute else name

    vis = ["--visual-checkpoint", str(Path(os.environ["METIS_CHECKPOINT_DIR"]) / "visual" / "model.pth")]
    return {
        "enhance": ["enhance", p("n0.wav")],
        "vc": ["vc", p("n0.wav"), p("ref.wav")],
        "tse": ["tse", p("n0.wav"), p("ref.wav")],
        "tts": ["tts", "-t", "Hello there.", "-p", p("ref.wav"), "--prompt-text", "A short prompt.",
                "-l", "en", "--prompt-language", "en"],
        "l2s": ["l2s", p("mouth.mkv"), *vis],
    }[task]  # fmt: skip


@pytest.mark.parametrize("task", ["enhance", "vc", "tse", "tts", "l2s"])
@pytest.mark.parametrize("mode", ["plain", "json", "quiet"])
def test_dash_output_writes_one_wav_to_stdout_for_every_command(
    task, mode, tiny_bundle, wav_factory, tmp_path, monkeypatch
):
    wav_factory("n0.wav", 0.6)
    wav_factory("ref.wav", 0.8, seed=1)
    _mouth_video(tmp_path / "mouth.mkv", frames=12)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("METIS_CHECKPOINT_DIR", str(tiny_bundle))
    before = sorted(tmp_path.iterdir())
    flags = {"plain": [], "json": ["--json"], "quiet": ["-q"]}[mode]
    absolute = mode != "json"  # relative inputs with --json, absolute ones otherwise
    res = run([*_dash_args(task, tmp_path, absolute), "-o", "-", "--seed", "5", *flags, *FAST], tiny_bundle)
    assert res.exit_code == 0, res.stderr
    data, sr = sf.read(io.BytesIO(res.stdout_bytes), dtype="float32")  # stdout is the WAV, nothing else
    assert sr == 24_000 and data.ndim == 1 and len(data) > 0
    assert sorted(tmp_path.iterdir()) == before  # no file or folder named "-"
    if mode == "json":  # the report goes to stderr: stdout carries the audio
        (rep,) = [json.loads(x) for x in res.stderr.splitlines() if x.startswith("{")]
        assert rep["status"] == "ok" and rep["output"] == "-" and rep["seed"] == 5
    if mode == "quiet":
        assert "ok:" not in res.stderr and "seed" not in res.stderr


def test_duration_out_of_range_is_a_usage_error_naming_the_flag(tiny_bundle, wav_factory):
    prompt = wav_factory("p.wav", 0.6)
    for value in ("0", "-1", "601", "nan"):
        res = run(
            ["tts", "-t", "Hi there.", "-p", str(prompt), "--prompt-text", "Hello.", "--duration", value]
        )
        assert res.exit_code == 2, (value, res.stderr)
        (line,) = res.stderr.strip().splitlines()
        assert line.startswith("metis: error: --duration: must be"), line
        if value != "nan":
            assert "more than 0 and at most 600 seconds" in line


def test_g2p_with_an_unknown_language_is_one_usage_error():
    res = CliRunner().invoke(app, ["g2p", "-l", "xx"], input="hello\nworld\n")
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        "metis: error: --language: must be one of zh, en, ja, fr, ko, de or auto (got 'xx')"
    ]


def test_rejected_manifest_rows_keep_their_id_output_and_seed_in_json(tmp_path):
    m = tmp_path / "jobs.jsonl"
    rows = [
        {"id": "first", "input": 7, "output": "one.wav", "seed": 3},  # a bad input field
        {"id": "second", "input": "x.wav", "output": "two.wav", "seed": 4, "colour": "red"},
    ]
    m.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    res = run(["enhance", "--manifest", str(m), "-o", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 1
    reps = json_lines(res.stdout)
    assert [(r["id"], r["seed"], r["output"]) for r in reps[:2]] == [
        ("first", 3, str(tmp_path / "out" / "one.wav")),
        ("second", 4, str(tmp_path / "out" / "two.wav")),
    ]
    assert reps[0]["inputs"] == {"input": "7"} and reps[1]["inputs"] == {"input": "x.wav"}
    assert reps[2]["origin"] == f"{m}:3" and "not valid JSON" in reps[2]["error"]

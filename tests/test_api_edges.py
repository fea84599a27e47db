"""The Python API's edges (issue 24 item 9): arguments are checked with API wording, every error
is a `MetisError`, `make_job`/`run` take what a user would pass, and callbacks stay per call."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import metis_cli
from metis_cli import api, jobs
from metis_cli.errors import InputError, MetisError, UsageError
from tests.conftest import FAST_API, speechlike


def _load(bundle: Path, task: str = "se", **kw):
    return api.load(task, checkpoint_dir=bundle, offline=True, device="cpu", **FAST_API, **kw)


def _wav(path: Path, seconds: float = 0.6, seed: int = 0) -> Path:
    sf.write(path, speechlike(seconds, seed=seed), 24_000)
    return path


@pytest.mark.parametrize("task", ["xx", "", 5, None, ["se"]])
def test_an_unknown_task_is_a_usage_error(task):
    with pytest.raises(UsageError, match="unknown task"):
        api.load(task)
    with pytest.raises(UsageError, match="unknown task"):
        jobs.make_job(task, ["a.wav"], "o.wav")


def test_make_job_takes_one_path_and_folder_outputs_like_the_cli(tiny_bundle, tmp_path):
    pipe = _load(tiny_bundle)
    a = _wav(tmp_path / "a.wav")
    for spelled in (str(a), a):
        job = pipe.make_job(spelled, tmp_path / "o.wav")
        assert job.inputs == {"input": a} and job.output == tmp_path / "o.wav"
    for out in (f"{tmp_path / 'outdir'}/", tmp_path / "plain", tmp_path / "plain"):
        job = pipe.make_job([a], out)
        assert Path(out).is_dir() and job.output == Path(out) / "a.wav"
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="exists and is not a folder"):
        pipe.make_job([a], f"{tmp_path / 'file'}/")
    # an existing file without an extension, or a device, is an output file, not a folder
    assert pipe.make_job([a], tmp_path / "file").output == tmp_path / "file"
    assert pipe.make_job([a], "/dev/null").output == Path("/dev/null")


def test_run_checks_its_arguments_before_anything_runs(tiny_bundle, tmp_path):
    pipe = _load(tiny_bundle)
    a = _wav(tmp_path / "a.wav")
    job = pipe.make_job([a], tmp_path / "o.wav")
    for bad in ("bogus", "", None, 1, "Overwrite"):
        with pytest.raises(UsageError, match="existing: must be one of 'error', 'overwrite', 'skip'"):
            pipe.run([job], existing=bad)  # raised at the call, not at the first iteration
    with pytest.raises(UsageError, match="on_chunk: must be a function"):
        pipe.run([job], on_chunk=3)
    with pytest.raises(UsageError, match=r"jobs\[1\]: must be a Job"):
        pipe.run([job, 5])
    with pytest.raises(UsageError, match="jobs: must be Jobs"):
        pipe.run(5)
    vc_job = jobs.make_job("vc", [a, a], tmp_path / "v.wav")
    with pytest.raises(UsageError, match=r"jobs\[0\]: a vc job; this pipeline runs se"):
        pipe.run([vc_job])
    assert not (tmp_path / "o.wav").exists()


def test_run_takes_input_paths_and_writes_where_the_cli_would(tiny_bundle, tmp_path):
    pipe = _load(tiny_bundle)
    a, b = _wav(tmp_path / "a.wav"), _wav(tmp_path / "b.wav", seed=1)
    reports = list(pipe.run([a, str(b), tmp_path / "missing.wav"]))
    assert [r.status for r in reports] == ["ok", "ok", "error"]
    assert (tmp_path / "a.enhanced.wav").is_file() and (tmp_path / "b.enhanced.wav").is_file()
    (single,) = list(pipe.run(str(a), existing="overwrite"))
    assert single.status == "ok" and single.output == str(tmp_path / "a.enhanced.wav")
    (again,) = list(pipe.run([a]))  # exists: API wording, no CLI flag
    assert again.status == "error" and "existing='overwrite' or existing='skip'" in again.error
    assert "--" not in again.error
    tts = _load(tiny_bundle, "tts")
    (rep,) = list(tts.run([a]))  # a TTS job needs a text: that job fails, nothing raises
    assert rep.status == "error" and "text is empty" in rep.error


BAD_CALLS = [
    ("make_job inputs int", lambda p, d: p.make_job(5, d / "o.wav")),
    ("make_job input None in list", lambda p, d: p.make_job([None], d / "o.wav")),
    ("make_job output int", lambda p, d: p.make_job([d / "a.wav"], 5)),
    ("make_job seed str", lambda p, d: p.make_job([d / "a.wav"], d / "o.wav", seed="x")),
    ("make_job seed negative", lambda p, d: p.make_job([d / "a.wav"], d / "o.wav", seed=-1)),
    ("make_job unknown field", lambda p, d: p.make_job([d / "a.wav"], d / "o.wav", colour=1)),
    ("make_job bytes", lambda p, d: p.make_job(b"a.wav", d / "o.wav")),
    ("call numpy", lambda p, d: p(np.zeros(100, np.float32))),
    ("call int", lambda p, d: p(5)),
    ("call decoding str", lambda p, d: p(d / "a.wav", steps="many")),
    ("call s2a int", lambda p, d: p(d / "a.wav", s2a_steps_full=3)),
    ("call unknown decoding", lambda p, d: p(d / "a.wav", stepz=3)),
    ("load bad dtype", lambda p, d: api.load("se", dtype="float8")),
    ("load bad steps", lambda p, d: api.load("se", steps=0)),
    ("load bad wording", lambda p, d: api.load("se", wording="shell")),
    ("tts text int", lambda p, d: jobs.make_job("tts", [d / "a.wav"], d / "o.wav", text=5, prompt_text="x")),
    (
        "tts duration str",
        lambda p, d: jobs.make_job("tts", [d / "a.wav"], "o", text="Hi.", prompt_text="x", duration="5"),
    ),
    (
        "tts language list",
        lambda p, d: jobs.make_job("tts", [d / "a.wav"], "o", text="Hi.", prompt_text="x", language=[]),
    ),
]


@pytest.mark.parametrize("name,call", BAD_CALLS, ids=[n for n, _ in BAD_CALLS])
def test_bad_arguments_raise_metis_errors_in_api_wording(tiny_bundle, tmp_path, name, call):
    pipe = _load(tiny_bundle)
    _wav(tmp_path / "a.wav")
    with pytest.raises(MetisError) as err:
        call(pipe, tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "--" not in msg, msg  # one line, no CLI flags


def test_missing_models_name_the_api_argument(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MetisError) as err:
        pipe = api.load("se", checkpoint_dir=empty, offline=True, device="cpu")
        pipe(_wav(tmp_path / "a.wav"))
    msg = str(err.value)
    assert "checkpoint_dir" in msg and "--checkpoint-dir" not in msg and "--offline" not in msg
    assert isinstance(err.value, MetisError)


def test_the_cli_wording_keeps_the_flags():
    assert api.api_wording("x: run `metis download se` or pass --checkpoint-dir") == (
        "x: run `metis download se` or pass checkpoint_dir=..."
    )
    assert api.api_wording("--steps: must be >= 1 (got 0)") == "steps: must be >= 1 (got 0)"
    assert api.api_wording("a.wav: exists (use --overwrite or --skip-existing)") == (
        "a.wav: exists (use existing='overwrite' or existing='skip')"
    )
    assert api.api_wording("the folder some--thing stays") == "the folder some--thing stays"
    assert api.api_wording("/tmp/--x/a.wav: not found") == "/tmp/--x/a.wav: not found"


def test_on_chunk_callbacks_never_cross_between_threads(tiny_bundle, tmp_path):
    """A second thread runs its own long job on the same pipeline while the first one is between
    two chunks: each callback sees exactly its own job's chunks."""
    pipe = _load(tiny_bundle, chunk_seconds=3.0, overlap_seconds=0.5, context_seconds=1.0)
    first = pipe.make_job([_wav(tmp_path / "one.wav", 8.0)], tmp_path / "one.out.wav", seed=1)
    second = pipe.make_job([_wav(tmp_path / "two.wav", 8.0, seed=1)], tmp_path / "two.out.wav", seed=2)
    seen: dict[str, list] = {"one": [], "two": []}
    reports: list = []

    def run_second() -> None:
        reports.extend(pipe.run([second], on_chunk=lambda p: seen["two"].append(p)))

    def on_first(p) -> None:
        seen["one"].append(p)
        if len(seen["one"]) == 1:  # mid-job: the other thread runs a whole job now
            t = threading.Thread(target=run_second)
            t.start()
            t.join(timeout=600)
            assert not t.is_alive()

    (rep,) = list(pipe.run([first], on_chunk=on_first))
    assert rep.status == "ok" and [r.status for r in reports] == ["ok"]
    assert seen["one"][0].total >= 2 and seen["two"][0].total >= 2
    assert {p.output for p in seen["one"]} == {first.output}
    assert {p.output for p in seen["two"]} == {second.output}
    assert [p.index for p in seen["one"]] == list(range(seen["one"][0].total))
    assert [p.index for p in seen["two"]] == list(range(seen["two"][0].total))


def test_api_errors_are_metis_errors():
    for name in ("UsageError", "InputError", "AudioError", "OutputError", "MissingModelError"):
        assert issubclass(getattr(metis_cli, name, getattr(api, name, MetisError)), MetisError)

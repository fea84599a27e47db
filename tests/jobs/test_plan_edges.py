"""Planning edges (issue 24): names that cannot be read fail alone, outputs stay inside `-o DIR`,
manifest rows' folders are made and rejected rows keep their fields, folder inputs pick every
readable format, and the final placement never replaces an output that appeared meanwhile.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from metis_cli import jobs
from metis_cli.api import rejected_report
from metis_cli.errors import OutputError
from metis_cli.jobs.plan import audio_extensions
from metis_cli.media import audio
from tests.conftest import speechlike


def _wav(path: Path | bytes, seconds: float = 0.3, fmt: str | None = None) -> Path | bytes:
    sf.write(path, speechlike(seconds), 24_000, format=fmt)
    return path


def _errors(plan: jobs.Plan) -> dict[str, str]:
    return {
        Path(next(iter(i.inputs.values()))).name: i.error for i in plan.items if isinstance(i, jobs.Rejected)
    }


def test_unreadable_names_fail_alone_as_arguments_and_inside_folders(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = _wav(folder / "good.wav")
    cafe = os.path.join(os.fsencode(folder), b"caf\xe9.wav")  # Latin-1 bytes: not UTF-8
    _wav(cafe)
    loop = folder / "loop.wav"
    loop.symlink_to("loop.wav")  # a symlink to itself
    (folder / "._good.wav").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS metadata companion
    w64 = Path(_wav(folder / "take.w64", fmt="W64"))
    (folder / "notes.txt").write_text("not audio")
    cafe_path = Path(os.fsdecode(cafe))
    for inputs in ((folder,), (good, cafe_path, loop, w64)):
        plan = jobs.plan(jobs.Request("se", inputs=inputs, output=tmp_path / "out", seed=1))
        names = sorted(Path(next(iter(i.inputs.values()))).name for i in plan.items)
        assert names == sorted(["good.wav", cafe_path.name, "loop.wav", "take.w64"])  # no ._good.wav
        assert sorted(j.inputs["input"].name for j in plan.jobs) == ["good.wav", "take.w64"]
        errors = _errors(plan)
        assert errors[cafe_path.name].endswith("the file name is not valid UTF-8 (rename the file)")
        assert errors["loop.wav"] == f"{loop}: symbolic link loop"
        for item in plan.items:  # a report of each item can be printed and serialised
            if isinstance(item, jobs.Rejected):
                json.dumps(rejected_report(item).to_dict())


def test_folder_inputs_pick_every_format_the_readers_read():
    exts = audio_extensions()
    for name in sf.available_formats():
        if name not in ("RAW", "MAT4", "MAT5"):
            assert f".{name.lower()}" in exts, name
    assert {".w64", ".rf64", ".caf", ".m4a", ".opus", ".mka"} <= exts
    assert not {".txt", ".jpg", ".srt", ".mat", ".raw"} & exts


def test_inputs_spelled_with_dot_dot_never_write_outside_the_output_folder(tmp_path, monkeypatch):
    work = tmp_path / "work"
    for sub in ("a", "b", "work/c"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        _wav(tmp_path / sub / "x.wav")
    monkeypatch.chdir(work)
    out = Path("out")
    plan = jobs.plan(
        jobs.Request("se", inputs=("../a/x.wav", "c/../../b/x.wav", "c/x.wav"), output=out, seed=1)
    )
    assert len(plan.jobs) == 3
    root = (work / "out").resolve()
    for job in plan.jobs:
        assert job.output.resolve().is_relative_to(root), job.output
    assert len({j.output.resolve() for j in plan.jobs}) == 3


def test_manifest_outputs_make_their_folders_and_stay_inside_the_output_folder(tmp_path):
    a = _wav(tmp_path / "a.wav")
    rows = [
        {"input": str(a), "output": "deep/er/a.wav", "id": "r1"},
        {"input": str(a), "output": "../escape.wav", "id": "r2", "seed": 5},
        {"input": str(a), "output": "sub/../b.wav", "id": "r3"},
    ]
    m = tmp_path / "jobs.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan = jobs.plan(jobs.Request("se", manifest=m, output=tmp_path / "out"))
    first, second, third = plan.items
    assert isinstance(first, jobs.Job) and (tmp_path / "out" / "deep" / "er").is_dir()
    assert isinstance(third, jobs.Job) and third.output.resolve() == (tmp_path / "out" / "b.wav")
    assert isinstance(second, jobs.Rejected) and "outside the -o folder" in second.error
    assert not (tmp_path / "escape.wav").exists()
    rep = rejected_report(second).to_dict()
    assert (rep["id"], rep["seed"], rep["inputs"]) == ("r2", 5, {"input": str(a)})
    assert rep["output"] == str(tmp_path / "out" / "../escape.wav")


def test_rejected_manifest_rows_keep_every_field_they_had(tmp_path):
    m = tmp_path / "jobs.csv"
    m.write_text(
        "id,input,output,seed\n"
        "row-1,a.wav,o1.wav,seven\n"  # a bad seed
        "row-2,,o2.wav,3\n"  # a missing input
        'row-3,"b.wav",o3.wav,4,extra\n'  # more cells than columns: nothing can be trusted
    )
    plan = jobs.plan(jobs.Request("se", manifest=m, output=tmp_path / "out"))
    reps = [rejected_report(i).to_dict() for i in plan.items]
    assert all(r["status"] == "error" for r in reps)
    assert reps[0]["id"] == "row-1" and reps[0]["seed"] == "seven" and reps[0]["inputs"] == {"input": "a.wav"}
    assert reps[0]["output"] == str(tmp_path / "out" / "o1.wav")
    assert reps[1]["id"] == "row-2" and reps[1]["seed"] == 3 and reps[1]["output"].endswith("o2.wav")
    assert reps[2]["origin"] == f"{m}:4" and "more cells" in reps[2]["error"]
    t = tmp_path / "tts.jsonl"
    t.write_text(
        json.dumps({"id": 9, "prompt": "p.wav", "text": "Hi there.", "prompt_text": "x", "duration": 0})
    )
    (rej,) = jobs.plan(jobs.Request("tts", manifest=t)).items
    rep = rejected_report(rej).to_dict()
    assert rep["id"] == "9" and rep["text"] == "Hi there." and "duration" in rep["error"]


def test_dash_output_is_stdout_for_every_command(tmp_path):
    a, b = _wav(tmp_path / "a.wav"), _wav(tmp_path / "b.wav")
    for task, inputs, fixed, extra in (
        ("se", (a,), {}, {}),
        ("l2s", (tmp_path / "v.mp4",), {}, {}),
        ("vc", (), {"source": a, "reference": b}, {}),
        ("tse", (), {"mix": a, "enrol": b}, {}),
        ("tts", (), {"prompt": a}, {"text": "Hello.", "prompt_text": "Hi."}),
    ):
        plan = jobs.plan(jobs.Request(task, inputs=inputs, fixed_inputs=fixed, output=Path("-"), **extra))
        assert [str(j.output) for j in plan.jobs] == ["-"], task
    assert not (tmp_path / "-").exists() and not Path("-").exists()


# ---- final placement ---------------------------------------------------------------------------------


def test_placement_without_replace_refuses_an_output_that_appeared(tmp_path):
    target = tmp_path / "out.wav"
    with audio.AtomicWavWriter(target, replace=False) as w:
        w.write(np.zeros(480, np.float32))
    before = target.read_bytes()
    with pytest.raises(OutputError, match="out.wav: cannot write the output \\(exists: another run"):
        with audio.AtomicWavWriter(target, replace=False) as w:
            w.write(np.ones(480, np.float32) * 0.5)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]
    with audio.AtomicWavWriter(target, replace=True) as w:  # --overwrite
        w.write(np.ones(480, np.float32) * 0.5)
    assert target.read_bytes() != before and sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]


@pytest.mark.parametrize("link_errno", [errno.EPERM, errno.EOPNOTSUPP])
def test_placement_falls_back_to_rename_noreplace_where_links_are_unsupported(
    tmp_path, monkeypatch, link_errno
):
    def no_links(*args, **kwargs):
        raise OSError(link_errno, os.strerror(link_errno))

    monkeypatch.setattr(os, "link", no_links)
    tmp, target = tmp_path / ".metis-x.tmp", tmp_path / "t.wav"
    tmp.write_bytes(b"new")
    audio.place_file(tmp, target, replace=False)
    assert target.read_bytes() == b"new" and not tmp.exists()
    tmp.write_bytes(b"newer")
    with pytest.raises(FileExistsError):
        audio.place_file(tmp, target, replace=False)
    assert target.read_bytes() == b"new" and tmp.exists()


def test_jobs_carry_the_existing_output_policy_to_placement(tmp_path):
    a = _wav(tmp_path / "a.wav")
    for existing, overwrite in (("error", False), ("skip", False), ("overwrite", True)):
        plan = jobs.plan(
            jobs.Request("se", inputs=(a,), output=tmp_path / f"o-{existing}.wav", existing=existing)
        )
        assert [j.overwrite for j in plan.jobs] == [overwrite]
        job = jobs.make_job("se", [a], tmp_path / f"p-{existing}.wav")
        assert [j.overwrite for j in jobs.plan_jobs("se", [job], existing).jobs] == [overwrite]


def test_writes_to_pseudo_filesystems_are_not_reported_as_a_full_disk():
    with pytest.raises(OutputError) as err:
        audio.write_audio_atomic("/proc/x.wav", np.zeros(480, np.float32))
    msg = str(err.value)
    assert msg.startswith("/proc/x.wav: cannot write the output (") and "no space" not in msg

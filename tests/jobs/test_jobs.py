"""The job layer: option validation, input expansion, manifests, output naming, cross-job checks.

No model is loaded here: planning reads no audio.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metis_cli import jobs as planning
from metis_cli import options
from metis_cli.errors import InputError, TextError, UsageError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF")
    return path


# -- options -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"steps": 0}, "--steps: must be >= 1 (got 0)"),
        ({"steps": 100_000}, "--steps: must be <= 1000"),
        ({"cfg": -1.0}, "--cfg: must be >= 0"),
        ({"temperature": -1.0}, "--temperature: must be > 0"),
        ({"temperature": float("nan")}, "--temperature: must be a finite number"),
        ({"s2a_temperature": -5.0}, "--s2a-temperature: must be > 0"),
        ({"s2a_steps": "x"}, "--s2a-steps: must be N or A,B"),
        ({"s2a_steps": "40,0"}, "--s2a-steps: must be >= 1"),
        ({"batch_size": 0}, "--batch-size: must be >= 1"),
        ({"attention": "flash"}, "--attention: must be one of eager, sdpa (got 'flash')"),
        ({"dtype": "int4"}, "--dtype: must be one of float32, bfloat16, float16"),
        ({"device": "gpu"}, "--device: must be auto, cpu, cuda, cuda:N or mps"),
        ({"seed": 2**64}, "--seed: must be within 0..2**63-1"),
        ({"seed": -1}, "--seed: must be within 0..2**63-1"),
        ({"chunk_seconds": 2.0}, "--chunk-seconds: must be 0 (off) or within 3-30 s"),
        ({"overlap_seconds": 10.0}, "--overlap-seconds: must be within 0.02 s and chunk/4"),
        ({"context_seconds": 19.5}, "--context-seconds: must be"),
        ({"max_chars": 5}, "--max-chars: must be >= 20"),
        ({"overwrite": True, "skip_existing": True}, "--overwrite, --skip-existing: give one, not both"),
        ({"nope": 1}, "unknown option(s): nope"),
    ],
)
def test_bad_option_values_are_usage_errors_naming_the_flag(values, message):
    with pytest.raises(UsageError) as err:
        groups = options.split(values)
        groups[options.OutputPolicy].existing  # noqa: B018 - the property checks the pair
    assert message in str(err.value)


def test_good_option_values_pass_and_decoding_overrides_parse():
    groups = options.split({"steps": 3, "s2a_steps": "7,5", "seed": 2**63 - 1, "skip_existing": True})
    assert groups[options.DecodingOptions].overrides() == {
        "steps": 3,
        "s2a_steps_1layer": (7,),
        "s2a_steps_full": (7, 5) + (1,) * 10,
    }
    assert groups[options.OutputPolicy].existing == "skip"
    assert groups[options.JobDefaults].seed == 2**63 - 1


# -- inputs ------------------------------------------------------------------------------------------


def test_existing_names_are_data_not_patterns(tmp_path):
    odd = touch(tmp_path / "take[1].wav")
    touch(tmp_path / "take1.wav")  # what the pattern take[1].wav would match
    assert planning.expand_inputs([str(odd)]) == [odd]
    assert planning.expand_inputs([str(tmp_path / "take*.wav")]) == sorted(
        [tmp_path / "take1.wav", tmp_path / "take[1].wav"]
    )
    with pytest.raises(UsageError, match="no file matches"):
        planning.expand_inputs([str(tmp_path / "none*.wav")])
    missing = tmp_path / "missing.wav"  # a plain missing name stays: that job fails "not found"
    assert planning.expand_inputs([str(missing)]) == [missing]


def test_folders_expand_to_their_audio_files_sorted(tmp_path):
    b, a = touch(tmp_path / "d" / "b.flac"), touch(tmp_path / "d" / "a.wav")
    touch(tmp_path / "d" / "notes.txt")
    touch(tmp_path / "d" / "sub" / "c.wav")  # not recursive
    assert planning.expand_inputs([str(tmp_path / "d")]) == [a, b]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no audio files in this folder"):
        planning.expand_inputs([str(tmp_path / "empty")])


def test_rerun_skips_its_own_earlier_outputs(tmp_path):
    x = touch(tmp_path / "x.wav")
    touch(tmp_path / "x.enhanced.wav")
    lone = touch(tmp_path / "y.enhanced.wav")  # looks like an output, but its source is absent
    plan = planning.plan(planning.Request("se", inputs=(str(tmp_path / "*.wav"),)))
    planned = [(it.job if isinstance(it, planning.Rejected) else it).inputs["input"] for it in plan.items]
    assert planned == [x, lone]  # x.wav's own output exists: that job is rejected, not dropped
    assert any("x.enhanced.wav: skipped" in w for w in plan.warnings)
    assert any("y.enhanced.wav: looks like a metis se output" in w for w in plan.warnings)


# -- output names ---------------------------------------------------------------------------------------


def test_output_naming_rules(tmp_path):
    a = touch(tmp_path / "in" / "a.wav")
    (job,) = planning.plan(planning.Request("se", inputs=(str(a),))).jobs
    assert job.output == tmp_path / "in" / "a.enhanced.wav"
    (job,) = planning.plan(planning.Request("se", inputs=(str(a),), output=tmp_path / "one.flac")).jobs
    assert job.output == tmp_path / "one.flac"
    for target in (tmp_path / "noext", Path(str(tmp_path / "slash") + "/")):  # one rule: a folder
        (job,) = planning.plan(planning.Request("se", inputs=(str(a),), output=target)).jobs
        assert job.output == Path(target) / "a.wav" and Path(target).is_dir()
    request = planning.Request(
        "tts", fixed_inputs={"prompt": a}, text="Hi there.", prompt_text="A b.", output=tmp_path / "tts_dir"
    )
    (job,) = planning.plan(request).jobs
    assert job.output == tmp_path / "tts_dir" / "tts.wav"


def test_same_stems_from_different_folders_mirror_their_folders(tmp_path):
    a = touch(tmp_path / "src" / "one" / "x.wav")
    b = touch(tmp_path / "src" / "two" / "x.wav")
    c = touch(tmp_path / "src" / "two" / "y.wav")
    plan = planning.plan(planning.Request("se", inputs=(str(a), str(b), str(c)), output=tmp_path / "out"))
    assert [j.output for j in plan.jobs] == [
        tmp_path / "out" / "one" / "x.wav",
        tmp_path / "out" / "two" / "x.wav",
        tmp_path / "out" / "two" / "y.wav",
    ]
    flat = planning.plan(
        planning.Request("se", inputs=(str(a), str(c)), output=tmp_path / "flat")
    )  # no collision
    assert [j.output for j in flat.jobs] == [tmp_path / "flat" / "x.wav", tmp_path / "flat" / "y.wav"]


def test_unwritable_extension_is_rejected_before_anything_runs(tmp_path):
    a = touch(tmp_path / "a.wav")
    with pytest.raises(UsageError, match="-o: .*cannot write .aac audio"):  # -o on the command line
        planning.plan(planning.Request("se", inputs=(str(a),), output=tmp_path / "a.aac"))
    m = tmp_path / "jobs.jsonl"  # a manifest row's output: that job fails, the others run
    m.write_text(json.dumps({"input": str(a), "output": str(tmp_path / "x.aac")}) + "\n")
    (item,) = planning.plan(planning.Request("se", manifest=m)).items
    assert isinstance(item, planning.Rejected) and "cannot write .aac audio" in item.error


def test_too_long_output_name_is_a_job_error(tmp_path):
    a = touch(tmp_path / "a.wav")
    (item,) = planning.plan(
        planning.Request("se", inputs=(str(a),), output=tmp_path / ("n" * 300 + ".wav"))
    ).items
    assert isinstance(item, planning.Rejected) and "file name too long" in item.error
    ok = planning.plan(
        planning.Request("se", inputs=(str(a),), output=tmp_path / ("n" * 246 + ".wav"))
    ).items[0]
    assert isinstance(ok, planning.Job)  # 250 characters: a valid name


# -- cross-job checks -------------------------------------------------------------------------------------


def test_two_jobs_writing_one_file_is_a_usage_error(tmp_path):
    a, b = touch(tmp_path / "a.wav"), touch(tmp_path / "b.wav")
    jobs = [planning.make_job("se", [p], tmp_path / "same.wav", seed=1) for p in (a, b)]
    with pytest.raises(UsageError, match="jobs 1 and 2 write the same output file"):
        planning.plan_jobs("se", jobs)


def test_an_output_that_is_another_jobs_input_is_a_usage_error(tmp_path):
    a, b = touch(tmp_path / "a.wav"), touch(tmp_path / "b.wav")
    jobs = [planning.make_job("se", [a], b, seed=1), planning.make_job("se", [b], tmp_path / "c.wav", seed=1)]
    with pytest.raises(UsageError, match="job 2 reads the file that job 1 writes"):
        planning.plan_jobs("se", jobs)


def test_existing_output_policy(tmp_path):
    a = touch(tmp_path / "a.wav")
    out = touch(tmp_path / "a.enhanced.wav")
    job = planning.make_job("se", [a], out, seed=1)
    (err,) = planning.plan_jobs("se", [job]).items
    assert isinstance(err, planning.Rejected) and err.status == "error" and "exists" in err.error
    (skip,) = planning.plan_jobs("se", [job], existing="skip").items
    assert isinstance(skip, planning.Rejected) and skip.status == "skipped"
    assert planning.plan_jobs("se", [job], existing="overwrite").items == [job]
    self_job = planning.make_job("se", [a], a, seed=1)
    (bad,) = planning.plan_jobs("se", [self_job], existing="overwrite").items
    assert "would overwrite an input" in bad.error


def test_output_under_a_regular_file_fails_even_as_root(tmp_path):
    a = touch(tmp_path / "a.wav")
    blocker = touch(tmp_path / "file")
    (item,) = planning.plan_jobs("se", [planning.make_job("se", [a], blocker / "o.wav", seed=1)]).items
    assert isinstance(item, planning.Rejected) and "output folder does not exist" in item.error


# -- manifests -------------------------------------------------------------------------------


def test_manifest_bad_lines_are_reported_and_good_lines_planned(tmp_path):
    a = touch(tmp_path / "a.wav")
    lines = [
        {"input": str(a), "output": str(tmp_path / "o1.wav")},
        "{not json",
        {"input": str(a), "seed": "abc", "output": str(tmp_path / "o2.wav")},
        {"input": 123},
        {"input": str(a), "output": 5},
        {"input": str(a), "bogus": 1, "output": str(tmp_path / "o3.wav")},
        {"output": str(tmp_path / "o4.wav")},
        [1, 2],
        {"input": str(a), "seed": 7, "output": str(tmp_path / "o5.wav")},
    ]
    m = tmp_path / "jobs.jsonl"
    m.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    plan = planning.plan(planning.Request("se", manifest=m, seed=11))
    errors = {i: it.error for i, it in enumerate(plan.items) if isinstance(it, planning.Rejected)}
    assert f"{m}:2: not valid JSON" in errors[1]
    assert f"{m}:3: field 'seed' must be an integer (got 'abc')" in errors[2]
    assert f"{m}:4: field 'input' must be a string (got int 123)" in errors[3]
    assert f"{m}:5: field 'output' must be a string" in errors[4]
    assert f"{m}:6: unknown field(s) 'bogus'" in errors[5]
    assert f"{m}:7: missing field(s) input" in errors[6]
    assert f"{m}:8: each line must be a JSON object" in errors[7]
    good = plan.jobs
    assert [j.origin for j in good] == [f"{m}:1", f"{m}:9"]
    assert [j.seed for j in good] == [11, 7]  # rows without a seed take --seed


def test_tts_manifest_types_and_bounds(tmp_path):
    p = touch(tmp_path / "p.wav")
    m = tmp_path / "jobs.csv"
    m.write_text(
        "prompt,text,prompt_text,duration,language\n"
        f"{p},Hello there.,A b.,long,\n"
        f"{p},Hello there.,A b.,100000,\n"
        f"{p},😀🎉,A b.,,\n"
        f"{p},Hello there.,A b.,,xx\n"
        f"{p},Hello there.,A b.,2.5,en\n"
    )
    plan = planning.plan(planning.Request("tts", manifest=m, output=tmp_path / "out"))
    errors = [it.error if isinstance(it, planning.Rejected) else None for it in plan.items]
    assert "field 'duration' must be a number (got 'long')" in errors[0]
    assert "duration: must be more than 0 and at most 600 seconds (got 100000)" in errors[1]
    assert "has no letters or digits to phonemise" in errors[2]
    assert "language must be one of" in errors[3]
    (job,) = plan.jobs
    assert job.duration == 2.5 and job.language == "en" and job.output == tmp_path / "out" / "tts-00005.wav"
    assert job.origin == f"{m}:6"


@pytest.mark.parametrize("content", [b"", b"\n\n", b"\xff\xfe\x00bad"])
def test_empty_or_unreadable_manifest_is_a_usage_error(tmp_path, content):
    m = tmp_path / "jobs.jsonl"
    m.write_bytes(content)
    with pytest.raises(UsageError):
        planning.plan(planning.Request("se", manifest=m))
    with pytest.raises(UsageError, match="manifest not found"):
        planning.plan(planning.Request("se", manifest=tmp_path / "absent.jsonl"))


def test_make_job_checks(tmp_path):
    p = touch(tmp_path / "p.wav")
    with pytest.raises(TextError, match="no letters"):
        planning.make_job("tts", [p], tmp_path / "o.wav", text="😀🎉", prompt_text="A b.")
    with pytest.raises(TextError, match="at most"):
        planning.make_job(
            "tts", [p], tmp_path / "o.wav", text="a" * (options.MAX_TEXT_CHARS + 1), prompt_text="A b."
        )
    with pytest.raises(InputError, match="seed: must be within"):
        planning.make_job("se", [p], tmp_path / "o.wav", seed=2**63)
    with pytest.raises(InputError, match="missing mix"):
        planning.make_job("tse", {"enrol": p}, tmp_path / "o.wav")

"""Shard selection from flags and launcher environments, the split, devices, length buckets."""

from __future__ import annotations

from pathlib import Path

import pytest

from metis_cli import jobs
from metis_cli.errors import UsageError
from metis_cli.runs.buckets import bucket, padding
from metis_cli.runs.shard import (
    Shard,
    local_device,
    resolve_shard,
    select,
    shard_from_env,
    torchrun_barrier,
)


def _plan(n: int, rejected: tuple[int, ...] = ()) -> jobs.Plan:
    items: list = []
    for i in range(n):
        if i in rejected:
            items.append(jobs.Rejected(f"jobs.jsonl:{i + 1}: bad", origin=f"jobs.jsonl:{i + 1}"))
        else:
            items.append(
                jobs.make_job("se", [f"in/{i}.wav"], f"out/{i}.wav", seed=i, origin=f"jobs.jsonl:{i + 1}")
            )
    return jobs.Plan("se", items)


def test_parse_and_names():
    assert Shard.parse("3/8") == Shard(3, 8) and str(Shard(3, 8)) == "3/8"
    assert Shard(3, 8).suffix == "shard-00003-of-00008"
    for bad in ("8/8", "-1/2", "1", "a/b", "1/0", ""):
        with pytest.raises(UsageError):
            Shard.parse(bad)
    assert resolve_shard("0/1", {}) is None  # one shard: everything, unsharded ledger name
    assert resolve_shard("1/4", {"RANK": "0", "WORLD_SIZE": "2"}) == Shard(1, 4)  # the flag wins


@pytest.mark.parametrize(
    "env, expect",
    [
        ({}, None),
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, Shard(1, 2)),  # torchrun / accelerate
        ({"RANK": "0", "WORLD_SIZE": "1"}, None),
        ({"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4"}, Shard(2, 4)),  # srun -n 4
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, None),  # the batch script of an --ntasks=4 job
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"}, None),
        ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8"}, Shard(5, 8)),
        ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "8"}, Shard(2, 8)),
        (  # --array=0-12:4 → tasks 0, 4, 8, 12
            {"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "12",
             "SLURM_ARRAY_TASK_STEP": "4"},
            Shard(2, 4),
        ),
        (  # an array of 3 tasks, each a 2-process torchrun: 6 shards
            {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3", "RANK": "1", "WORLD_SIZE": "2",
             "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"},
            Shard(5, 6),
        ),
    ],
)  # fmt: skip
def test_shard_from_env(env, expect):
    assert shard_from_env(env) == expect


def test_bad_environments_are_usage_errors():
    for env in (
        {"RANK": "2", "WORLD_SIZE": "2"},
        {"RANK": "x", "WORLD_SIZE": "2"},
        {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"},
        {"SLURM_ARRAY_TASK_ID": "3"},  # neither count nor max
    ):
        with pytest.raises(UsageError):
            shard_from_env(env)


@pytest.mark.parametrize("n, count", [(24, 2), (24, 5), (3, 8), (1, 3), (100, 7)])
def test_select_is_a_partition_stable_and_balanced(n, count):
    plan = _plan(n, rejected=(0, 2))
    parts = [select(plan, Shard(i, count)) for i in range(count)]
    seen = [id(item) for p in parts for item in p.items]
    assert sorted(seen) == sorted(id(item) for item in plan.items)  # every item exactly once
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == [Shard(i, count).size(n) for i in range(count)]
    again = [select(_plan(n, rejected=(0, 2)), Shard(i, count)) for i in range(count)]
    assert [[_origin(x) for x in p.items] for p in parts] == [[_origin(x) for x in p.items] for p in again]
    for i, p in enumerate(parts):  # round-robin: item k in shard k mod N, in plan order
        assert [_origin(x) for x in p.items] == [f"jobs.jsonl:{k + 1}" for k in range(i, n, count)]


def _origin(item) -> str:
    return item.origin


def test_local_device():
    two = lambda: 2  # noqa: E731
    none = lambda: 0  # noqa: E731
    assert local_device("auto", {"LOCAL_RANK": "1"}, two) == "cuda:1"
    assert local_device("auto", {"LOCAL_RANK": "3"}, two) == "cuda:1"  # more processes than GPUs
    assert local_device("auto", {"SLURM_LOCALID": "0"}, two) == "cuda:0"
    assert local_device("auto", {"LOCAL_RANK": "1"}, none) == "auto"  # no CUDA: auto as usual
    assert local_device("auto", {}, two) == "auto"  # a single process: auto as usual
    assert local_device("cpu", {"LOCAL_RANK": "1"}, two) == "cpu"  # an explicit device wins
    assert local_device("cuda:0", {"LOCAL_RANK": "1"}, two) == "cuda:0"


def test_padding_and_buckets():
    assert padding([1.0, 3.0, 2.0, 2.0], 2).efficiency == pytest.approx(8 / 10)
    p = padding([3.0, 2.0, 2.0, 1.0], 2)  # sorted: batches (3, 2) and (2, 1)
    assert (p.useful, p.padded, p.batches) == (8.0, 10.0, 2)
    p = padding([3.0, 3.0, 1.0, 1.0], 2)
    assert (p.useful, p.padded, p.efficiency) == (8.0, 8.0, 1.0)
    p = padding([1.0, 30.0, 1.0], 2, long_seconds=20.0)  # the long job runs alone, in chunks
    assert (p.useful, p.padded, p.batches) == (32.0, 32.0, 3)  # it also splits its neighbours
    assert padding([None, 2.0], 2).useful == 2.0
    plan = _plan(10, rejected=(4,))
    lengths = {f"out/{i}.wav": float((i * 3) % 7) for i in range(10)}
    b = bucket(plan, 2, window=100, lengths=lambda j: lengths[str(j.output)])
    items = b.plan.items
    assert isinstance(items[0], jobs.Rejected) and len(items) == 10
    runs = [lengths[str(j.output)] for j in items[1:]]
    assert runs == sorted(runs, reverse=True)
    assert b.bucketed.efficiency >= b.original.efficiency
    assert {id(x) for x in items} == {id(x) for x in plan.items}
    # windows: sorted within each window of window * batch_size jobs only
    w = bucket(plan, 2, window=1, lengths=lambda j: lengths[str(j.output)]).plan.jobs
    assert [str(j.output) for j in w[:2]] == sorted(["out/0.wav", "out/1.wav"], key=lambda o: -lengths[o])
    same = bucket(plan, 2, lengths=lambda j: 1.0, sort=False)
    assert same.plan is plan and not same.sorted
    assert bucket(plan, 1).plan is plan


def test_no_barrier_outside_torchrun():
    assert torchrun_barrier({"RANK": "0", "WORLD_SIZE": "2"}) is False
    assert torchrun_barrier({"TORCHELASTIC_RUN_ID": "x", "MASTER_ADDR": "h", "WORLD_SIZE": "1"}) is False


def test_job_seconds(wav_factory, tmp_path: Path):
    from metis_cli.runs.buckets import job_seconds

    a = wav_factory("a.wav", 1.5)
    b = wav_factory("b.wav", 0.5, sr=16_000)
    assert job_seconds(jobs.make_job("se", [a], tmp_path / "o.wav")) == pytest.approx(1.5)
    assert job_seconds(jobs.make_job("vc", [a, b], tmp_path / "o.wav")) == pytest.approx(2.0)
    assert job_seconds(jobs.make_job("se", [tmp_path / "missing.wav"], tmp_path / "o.wav")) is None
    tts = jobs.make_job(
        "tts", {"prompt": b}, tmp_path / "o.wav", text="Hello there friend", prompt_text="Hi there"
    )
    assert job_seconds(tts) == pytest.approx(0.5 + 0.5 / 8 * 18)
    assert job_seconds(jobs.make_job("tts", {"prompt": b}, tmp_path / "o.wav", text="Hello", prompt_text="Hi",
                                  duration=3.0)) == pytest.approx(3.5)  # fmt: skip

"""`metis ray` fails fast with the missing resource named: an --address nobody answers, actors the
cluster can never hold (GPUs on CPU nodes, more actors than CPUs); `runs.ray.require` for the API."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from metis_cli.errors import UsageError
from metis_cli.runs.ray import probe_address, shortfall
from tests.serve.conftest import free_port

from .conftest import FAST, subprocess_env, write_corpus

METIS = [sys.executable, "-m", "metis_cli.cli"]
FLAGS = {"actors": "--workers", "cpus": "--cpus-per-worker", "gpus": "--gpus-per-worker"}
CPU_NODE = {"Alive": True, "Resources": {"CPU": 4.0, "memory": 1e9}}
GPU_NODE = {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 2.0}}


def test_shortfall_names_the_resource():
    assert shortfall([CPU_NODE], 1, 1.0, 1.0, FLAGS) == (
        "--gpus-per-worker 1: no node of the cluster has 1 GPU(s) (most on one node: 0)"
    )
    assert shortfall([CPU_NODE, GPU_NODE], 1, 1.0, 1.0, FLAGS) is None
    assert shortfall([GPU_NODE], 3, 1.0, 1.0, FLAGS) == (
        "--workers 3: the cluster holds at most 2 actor(s) of 1 CPU(s) and 1 GPU(s)"
    )
    assert shortfall([CPU_NODE], 1, 8.0, 0.0, FLAGS) == (
        "--cpus-per-worker 8: no node of the cluster has 8 CPU(s) (most on one node: 4)"
    )
    assert shortfall([CPU_NODE, CPU_NODE], 8, 1.0, 0.0, FLAGS) is None
    assert shortfall([{**GPU_NODE, "Alive": False}], 1, 1.0, 1.0, FLAGS).startswith("--gpus-per-worker 1:")


def test_an_address_nobody_answers_is_one_line_and_quick(tiny_bundle, tmp_path):
    port = free_port()  # nothing listens there
    with pytest.raises(UsageError, match=rf"--address 127.0.0.1:{port}: no Ray cluster answers"):
        probe_address(f"127.0.0.1:{port}", 5.0)
    with pytest.raises(UsageError, match=rf"RAY_ADDRESS ray://127.0.0.1:{port}: no Ray cluster answers"):
        probe_address(f"ray://127.0.0.1:{port}", 5.0, "RAY_ADDRESS")
    probe_address("auto", 5.0)  # left to Ray

    write_corpus(tmp_path, n_jobs=2, bad_lines=(99,))
    address = f"127.0.0.1:{port}"
    cmd = [*METIS, "ray", "enhance", "--manifest", "jobs.jsonl", "-o", "out", "--address", address,
           "--ray-timeout", "5", "--results", "res.jsonl", *FAST]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(tiny_bundle), capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("metis: error:")]
    assert errors == [f"metis: error: --address 127.0.0.1:{port}: no Ray cluster answers "
                      "(Connection refused; waited up to 5 s)"]  # fmt: skip
    assert not list(tmp_path.glob("out/*.wav"))


RAY_REQUIRE = r"""
import ray
from metis_cli.errors import UsageError
from metis_cli.runs import ray as metis_ray

ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
try:
    metis_ray.require(actors=1, num_gpus=1, timeout=1)
except UsageError as exc:
    print(exc)
metis_ray.require(actors=1, num_cpus=1, timeout=1)
ray.shutdown()
"""


@pytest.mark.slow  # starts local Ray clusters (~20-60 s on the shared CI machine)
def test_resources_a_local_cluster_can_never_hold(tiny_bundle, tmp_path):
    write_corpus(tmp_path, n_jobs=2, bad_lines=(99,))
    env = subprocess_env(tiny_bundle, RAY_AUTH_MODE="disabled")
    cmd = [*METIS, "ray", "enhance", "--manifest", "jobs.jsonl", "-o", "out", "--num-cpus", "1",
           "--gpus-per-worker", "1", *FAST]  # fmt: skip
    t0 = time.monotonic()
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "metis: error: --gpus-per-worker 1: no node of the cluster has 1 GPU(s) (most on one node: 0)" in (
        res.stderr
    )
    assert time.monotonic() - t0 < 240
    res = subprocess.run([*cmd[:-6], "--workers", "3", *FAST], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    assert "--workers 3: the cluster holds at most 1 actor(s) of 1 CPU(s)" in res.stderr
    # the Python API: require() instead of map_batches(num_gpus=1) waiting for ever
    (tmp_path / "req.py").write_text(RAY_REQUIRE)
    res = subprocess.run([sys.executable, "req.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert (
        res.stdout.strip()
        == "num_gpus 1: no node of the cluster has 1 GPU(s) (most on one node: 0) (waited 1 s)"
    )


def test_ray_flags_come_from_the_option_group():
    from dataclasses import fields

    from metis_cli.options import RayOptions

    flags = {f.metadata["flag"] for f in fields(RayOptions)}
    source = (Path(__file__).resolve().parents[2] / "metis_cli" / "cli" / "ray_cmd.py").read_text()
    assert "typer.Option(" not in source  # no hand-written option list in the command
    assert {"--workers", "--gpus-per-worker", "--address", "--ray-timeout", "--manifest"} <= flags

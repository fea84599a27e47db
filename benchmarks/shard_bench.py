"""Sharded runs on one machine: 1 process x T threads vs P processes x T/P threads on one manifest,
and the padding of padded batches with and without length buckets.

    python benchmarks/shard_bench.py                         # tiny random bundle (proves it runs)
    python benchmarks/shard_bench.py --checkpoint-dir .bench_cache/full --jobs 32 --steps 10
    python benchmarks/shard_bench.py --jobs 48 --batch-size 4 --json
    python benchmarks/shard_bench.py --default-threads --threads 2   # 2 shards: default vs --threads 1

Every configuration is the real CLI in fresh subprocesses (`python -m metis_cli.cli enhance
--manifest ... --results ...`), on the same manifest of `--jobs` speech-like inputs of random
lengths (`--min-seconds` to `--max-seconds`, fixed seed), with fixed per-job seeds:

* `1x{T}`: one process with OMP_NUM_THREADS=T (T = --threads, default 2);
* `{P}x{T/P}`: P processes (--shard i/P, as a SLURM array or torchrun would start them) at the
  same time, T/P threads each;
* with `--default-threads` instead: P shards side by side, once with torch's default threads in
  each process (no OMP_NUM_THREADS, no --threads) and once with `--threads T/P`;
* both at --batch-size B (default 4), with length buckets (the default) and, for the single
  process, without (`--no-length-buckets`: manifest order).

Reported per configuration: wall time (first process start to last process end, model loads
included), jobs/s, seconds of input audio per second, and the padding efficiency (useful frames /
padded frames, estimated from input lengths) that the run's ledger summary records. The
estimate is made by the run itself, so it is exact for the order the engine saw.

Timing figures mean something only on an otherwise idle machine: on a shared one, compare
figures of one invocation at most, and say so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

REPO_ROOT = Path(__file__).resolve().parent.parent


def speech_like(seconds: float, sr: int = 24_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t) ** 2
    wav = sum(np.sin(k * phase) / k for k in range(1, 6)) * env * 0.1
    return (wav + 0.005 * rng.standard_normal(len(t))).astype(np.float32)


def write_manifest(root: Path, n: int, lo: float, hi: float, seed: int) -> tuple[Path, float]:
    rng = np.random.default_rng(seed)
    (root / "in").mkdir(parents=True, exist_ok=True)
    lines, total = [], 0.0
    for i in range(n):
        seconds = float(rng.uniform(lo, hi))
        total += seconds
        path = root / "in" / f"j{i:05d}.wav"
        sf.write(path, speech_like(seconds, seed=i), 24_000)
        lines.append(json.dumps({"input": str(path), "seed": i}))
    manifest = root / "jobs.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, total


def run_config(
    name: str,
    manifest: Path,
    root: Path,
    procs: int,
    threads: int,
    common: list[str],
    env: dict[str, str],
    buckets: bool = True,
    mode: str = "env",
) -> dict[str, Any]:
    """mode: "env" (OMP_NUM_THREADS=threads), "flag" (`--threads threads`, no OMP variables) or
    "default" (neither: torch's default thread count in every process)."""
    out = root / f"out-{name}"
    results = root / f"res-{name}.jsonl"
    cmd = [sys.executable, "-m", "metis_cli.cli", "enhance", "--manifest", str(manifest), "-o", str(out)]
    cmd += ["--results", str(results), "-q", *common]
    if not buckets:
        cmd.append("--no-length-buckets")
    penv = {k: v for k, v in env.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if mode == "env":
        penv.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    elif mode == "flag":
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    running = [
        subprocess.Popen(
            cmd + (["--shard", f"{i}/{procs}"] if procs > 1 else []),
            env=penv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(procs)
    ]
    errors = [p.communicate()[1] for p in running]
    wall = time.perf_counter() - t0
    codes = [p.returncode for p in running]
    if any(codes):
        raise SystemExit(f"{name}: exit codes {codes}\n" + "\n".join(e[-2000:] for e in errors))
    from metis_cli.runs.ledger import read_ledger, run_ledgers

    useful = padded = 0.0
    seen: set[int] = set()
    ok = 0
    audio = 0.0
    for p in run_ledgers(results):
        for rec in read_ledger(p):
            if rec.get("ledger") and rec.get("threads") is not None:
                seen.add(rec["threads"])  # torch threads each process used (ledger header)
            if rec.get("summary") and rec.get("padding"):
                useful += rec["padding"]["useful_seconds"]
                padded += rec["padding"]["padded_seconds"]
            elif rec.get("status") == "ok":
                ok += 1
                audio += rec.get("audio_seconds") or 0.0
    return {
        "config": name,
        "processes": procs,
        "threads_per_process": threads if mode != "default" else "default",
        "threads_by": mode,
        "torch_threads": sorted(seen),
        "length_buckets": buckets,
        "jobs_ok": ok,
        "wall_seconds": round(wall, 2),
        "jobs_per_second": round(ok / wall, 3),
        "audio_seconds_per_second": round(audio / wall, 3),
        "padding_efficiency": round(useful / padded, 4) if padded else None,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint-dir", type=Path, help="model tree (default: a tiny random bundle)")
    ap.add_argument("--jobs", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="threads in all (split between processes)")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=0.5)
    ap.add_argument("--max-seconds", type=float, default=4.0)
    ap.add_argument("--steps", default="2", help="stage-1 steps (tiny default: 2)")
    ap.add_argument("--s2a-steps", default="2,2")
    ap.add_argument("--seed", type=int, default=0, help="seed of the input lengths")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument(
        "--default-threads",
        action="store_true",
        help="instead: P shards side by side with torch's default threads vs with --threads T/P",
    )
    args = ap.parse_args(argv)
    if args.threads % args.processes:
        ap.error("--threads must be a multiple of --processes")

    with tempfile.TemporaryDirectory(prefix="metis_shard_bench_") as tmp:
        root = Path(tmp)
        bundle = args.checkpoint_dir
        if bundle is None:
            from metis_cli.testing.tiny_bundle import write_tiny_bundle

            bundle = write_tiny_bundle(root / "bundle", seed=0)
        manifest, total = write_manifest(root, args.jobs, args.min_seconds, args.max_seconds, args.seed)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
        }
        env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
        env.update(METIS_CHECKPOINT_DIR=str(bundle), PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1")
        common = ["--steps", args.steps, "--s2a-steps", args.s2a_steps, "--batch-size", str(args.batch_size)]
        common += ["--device", "cpu"]
        t, p = args.threads, args.processes
        if args.default_threads:
            rows = [
                run_config(f"{p}x-default-threads", manifest, root, p, t // p, common, env, mode="default"),
                run_config(f"{p}x--threads-{t // p}", manifest, root, p, t // p, common, env, mode="flag"),
            ]
        else:
            rows = [
                run_config(f"1x{t}", manifest, root, 1, t, common, env),
                run_config(f"{p}x{t // p}", manifest, root, p, t // p, common, env),
                run_config(f"1x{t}-manifest-order", manifest, root, 1, t, common, env, buckets=False),
            ]
    meta = {
        "jobs": args.jobs,
        "input_seconds": round(total, 2),
        "batch_size": args.batch_size,
        "bundle": "tiny random" if args.checkpoint_dir is None else str(args.checkpoint_dir),
        "steps": args.steps,
        "s2a_steps": args.s2a_steps,
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
        return
    print(
        f"{meta['jobs']} jobs, {meta['input_seconds']} s of input, batch size {meta['batch_size']}, "
        f"{meta['bundle']} bundle"
    )
    print(f"{'config':<22} {'wall s':>8} {'jobs/s':>8} {'audio s/s':>10} {'padding eff.':>13}")
    for r in rows:
        eff = "-" if r["padding_efficiency"] is None else f"{r['padding_efficiency']:.3f}"
        print(
            f"{r['config']:<22} {r['wall_seconds']:>8.2f} {r['jobs_per_second']:>8.3f} "
            f"{r['audio_seconds_per_second']:>10.3f} {eff:>13}"
        )


if __name__ == "__main__":
    main()

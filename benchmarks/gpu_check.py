"""GPU check of metis: correctness on CUDA against the CPU reference, then speed and memory.

    bash benchmarks/gpu_check.sh [OUTDIR]                      # on a machine with one CUDA GPU
    python benchmarks/gpu_check.py --device cpu --full-from-tiny --quick   # its CPU paths, here

STATUS: written in a session WITHOUT a GPU. Its CPU paths (every section with `--device cpu`,
the full-size section on the tiny bundle) ran end to end; the CUDA-only parts (TF32 flags,
fp16, CUDA graphs, the sync detector, launch counts, VRAM) have never run. Read the first GPU
run's table critically and fix what it shows.

Sections, in order (each skipped when the time budget left is below its estimate; every
failure is a FAIL row, the others still run):

  env      torch / CUDA / GPU, TF32 flags before and after `devices.apply_precision`
  golden   the official golden replays on the device in fp32 with TF32 off (reference loop,
           batched loop, static shapes): tokens must equal the CPU goldens; backbone error
  tiny     tiny bundle, every task x fp32/bf16(/fp16) on the device against a CPU fp32 run
           drawing the same CPU noise: token agreement, SNR, non-finite samples; the host-sync
           detector (native device noise, torch.cuda.set_sync_debug_mode: at most one sync per
           decoding loop, the non-finite check); padded batch 3 vs 1; static shapes (must be
           token-equal) and CUDA graphs vs the default loop; low-memory residency
  fullgen  full-size random checkpoints (benchmarks/make_full_size.py; large matrices drawn on
           the GPU); `--full-from-tiny` uses the tiny bundle instead (CPU runs)
  full     SE 4 s and TTS 3 s prompt + 3 s: fp32, bf16, bf16 + sdpa + fused CFG + static shapes
           (+ CUDA graphs), fp16 SE: models ready, per-stage wall, RTF, peak VRAM
           (max_memory_allocated), token agreement vs fp32, kernel launches and host syncs per
           stage-1 step; SE throughput at batch 1 / 8 / 32
  train    finetune se on the tiny bundle: 2 steps on the device, then --resume on the CPU
           with the GPU hidden
  pytest   tests/core/test_decoding.py, tests/core/test_devices.py (incl. the `cuda`-marked tests),
           test_fast_modes.py, test_weight_cache.py with the GPU visible

Prints ONE table at the end (section | check | result | figures) and writes every figure to
OUT/gpu_check.json. Exit 1 when a check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
T0 = time.perf_counter()
RES: dict = {"sections": {}}
ROWS: list[tuple[str, str, str, str]] = []  # section, check, PASS/FAIL/INFO/SKIP, figures
QUICK = {"steps": 2, "s2a_steps_1layer": (2,), "s2a_steps_full": (2, 2) + (1,) * 10}
TINY = {"steps": 4, "s2a_steps_1layer": (4,), "s2a_steps_full": (4, 2) + (1,) * 10}
TTS_TEXT = {"text": "Hello there.", "prompt_text": "A prompt.", "language": "en", "prompt_language": "en"}


def now() -> float:
    return time.perf_counter() - T0


def log(msg: str) -> None:
    print(f"[{now():6.1f}s] {msg}", flush=True)


def row(section: str, check: str, status: str | bool, figures: str = "") -> None:
    if isinstance(status, bool):
        status = "PASS" if status else "FAIL"
    ROWS.append((section, check, status, figures))
    log(f"{status} {section}/{check} {figures}")


def gib(n: float) -> float:
    return round(n / 2**30, 3)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"_gc_{name}", REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------------------- hooks
@contextlib.contextmanager
def cpu_noise():
    """Every job draws from a CPU generator (the official hidden SSL draws first), copied to the
    device by TorchNoise: the noise of a CPU run, so device and CPU tokens compare."""
    from metis_cli.constants import SSL_NUM_LAYERS_OFFICIAL
    from metis_cli.core.ssl import official_hidden_draws
    from metis_cli.engine.batch import BatchGenerator

    orig = BatchGenerator.generator

    def gen(self, job, conds):
        g = torch.Generator().manual_seed(job.seed)
        for _ in range(conds.ssl_forwards):
            official_hidden_draws(g, SSL_NUM_LAYERS_OFFICIAL)
        return g

    BatchGenerator.generator = gen
    try:
        yield
    finally:
        BatchGenerator.generator = orig


@contextlib.contextmanager
def instrument(dev: torch.device, static: bool = False, graphs: bool = False, count_syncs: bool = False):
    """Around the sampling entry points the engine calls: keep the tokens, time stage 1 and each
    S2A model (synchronised), opt into static shapes / CUDA graphs (as --static-shapes and
    --cuda-graphs do), and count host syncs inside the loops (torch.cuda sync debug mode, warn)."""
    from metis_cli.core import decoding

    rec = {
        "semantic": [],
        "codes": [],
        "stage1": 0.0,
        "s2a_1layer": 0.0,
        "s2a_full": 0.0,
        "syncs": 0,
        "loops": 0,
    }
    o1, o2, om = decoding.stage1_generate, decoding.s2a_generate, decoding.metis_semantic_to_acoustic

    def timed(key, fn, model, *a, **k):
        sync(dev)
        t = time.perf_counter()
        if count_syncs and dev.type == "cuda":
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    out = fn(model, *a, **k)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            rec["syncs"] += sum("synchroniz" in str(w.message).lower() for w in caught)
        else:
            out = fn(model, *a, **k)
        sync(dev)
        rec[key] += time.perf_counter() - t
        return out

    def fast(opts):
        return dataclasses.replace(
            opts, static_shapes=static or opts.static_shapes, cuda_graphs=graphs or opts.cuda_graphs
        )

    def s1(model, prompts, lens, phones, cond, opts, noise):
        rec["loops"] += 1
        out = timed("stage1", o1, model, prompts, lens, phones, cond, fast(opts), noise)
        rec["semantic"] += [o.cpu() for o in out]
        return out

    def s2a(model, semantic, prompts, opts, noise, gt=None):
        start = 0 if gt is None else gt[0].shape[-1]
        rec["loops"] += model.num_quantizer - start
        key = "s2a_1layer" if model.num_quantizer == 1 else "s2a_full"
        return timed(key, o2, model, semantic, prompts, fast(opts), noise, gt)

    def m(*a, **k):
        out = om(*a, **k)
        rec["codes"] += [o.cpu() for o in out]
        return out

    decoding.stage1_generate, decoding.s2a_generate, decoding.metis_semantic_to_acoustic = s1, s2a, m
    try:
        yield rec
    finally:
        decoding.stage1_generate, decoding.s2a_generate, decoding.metis_semantic_to_acoustic = o1, o2, om


@contextlib.contextmanager
def no_g2p():
    """TTS without the text front end (phonemizer/espeak: CPU code that CI covers)."""
    import metis_cli.text as T

    orig = T.tts_phone_ids

    def ids(prompt_text, target_text, prompt_language=None, target_language=None):
        n = lambda s: max(4, 12 * len(s.split()))  # noqa: E731 - ~12 phones per word
        return [(7 * i) % 200 + 1 for i in range(n(prompt_text))], [
            (11 * i) % 200 + 1 for i in range(n(target_text))
        ]

    T.tts_phone_ids = ids
    try:
        yield
    finally:
        T.tts_phone_ids = orig


@contextlib.contextmanager
def synthetic_video():
    """L2S without PyAV: the visual features come from random mouth crops through the real
    (tiny) visual encoder on the device. Patch before the pipeline is built."""
    from metis_cli.engine.loader import ModelLoader
    from metis_cli.media.video import visual_features

    orig = ModelLoader._visual_features

    def feats(self, path, landmarks=None):
        rois = np.random.default_rng(0).standard_normal((40, 88, 88)).astype(np.float32)  # 1.6 s
        return visual_features(self.component("visual"), rois)

    ModelLoader._visual_features = feats
    try:
        yield
    finally:
        ModelLoader._visual_features = orig


def agreement(a: dict, b: dict) -> dict:
    def frac(xs, ys, sl=lambda t: t):
        same = tot = 0
        for x, y in zip(xs, ys, strict=True):
            x, y = sl(x), sl(y)
            n = min(x.shape[0], y.shape[0])
            same += int((x[:n] == y[:n]).sum())
            tot += max(x.numel(), y.numel())
        return round(same / max(tot, 1), 4)

    return {"sem": frac(a["semantic"], b["semantic"]), "ac": frac(a["codes"], b["codes"])}


def snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    n = min(len(ref), len(x))
    err = float(np.sum((ref[:n] - x[:n]) ** 2))
    return round(10 * math.log10(float(np.sum(ref[:n] ** 2)) / err), 1) if err > 0 else float("inf")


def write_wav(path: Path, seconds: float, seed: int = 0) -> Path:
    import soundfile as sf

    sf.write(path, bench_module("bench").speech_like(seconds, seed=seed), 24000)
    return path


def run_jobs(pipe, inputs_list, dev, seed=3, text=None, **inst) -> dict:
    """Run jobs through the engine (nothing written): wall, tokens, wavs, stage times, VRAM."""
    jobs = [
        pipe.make_job(inp, os.devnull, seed=seed + i, **(text or {})) for i, inp in enumerate(inputs_list)
    ]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    st = pipe.engine.stats
    before = dict(st.wall)
    with instrument(dev, **inst) as rec:
        sync(dev)
        t = time.perf_counter()
        res = list(pipe.engine.run(jobs, pipe.decoding(), write=False))
        sync(dev)
        wall = time.perf_counter() - t
    bad = [r.error for r in res if not r.ok]
    if bad:
        raise RuntimeError(bad[0])
    out = {
        "wall": wall,
        "audio_s": sum(r.audio_seconds or 0.0 for r in res),
        "stages": {k: round(v - before.get(k, 0.0), 3) for k, v in st.wall.items()},
        "stage1": round(rec["stage1"], 3),
        "s2a_1layer": round(rec["s2a_1layer"], 3),
        "s2a_full": round(rec["s2a_full"], 3),
        "syncs": rec["syncs"],
        "loops": rec["loops"],
        "semantic": rec["semantic"],
        "codes": rec["codes"],
        "wavs": [r.wav for r in res],
        "nonfinite": int(sum((~np.isfinite(r.wav)).sum() for r in res)),
    }
    if dev.type == "cuda":
        out["peak_gib"] = gib(torch.cuda.max_memory_allocated(dev))
    return out


def free(dev) -> None:
    import gc

    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def public(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("semantic", "codes", "wavs")}


def fp32_reference_mode(dev) -> None:
    from metis_cli.core.devices import apply_precision

    apply_precision(dev, torch.float32, allow_tf32=False)


# ----------------------------------------------------------------------------------------- sections
def sec_env(args, dev):
    import transformers

    from metis_cli.core.devices import apply_precision, tf32_state

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__}
    info["tf32_default"] = tf32_state()
    apply_precision(dev, torch.float32)
    info["tf32_after_apply_precision"] = tf32_state()
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", vram_gib=gib(p.total_memory))
        row(
            "env", "TF32 off for fp32 (apply_precision)", not any(info["tf32_after_apply_precision"].values())
        )
    row("env", "versions", "INFO", f"{info.get('gpu', dev)} torch {info['torch']} cuda {info['cuda']}")
    return info


def sec_golden(args, dev):
    """Golden replays on the device, fp32, TF32 off: tokens must equal the official CPU outputs."""
    from metis_cli.core.decoding import (
        ReplayNoise,
        s2a_generate,
        s2a_reference,
        stage1_generate,
        stage1_reference,
    )
    from tests.golden import generator_helpers as gh
    from tests.golden.cases import all_cases

    fp32_reference_mode(dev)
    out = {"runs": 0, "equal": 0, "bb_max_abs": 0.0, "mismatch": []}

    def check(label, got, exp):
        out["runs"] += 1
        ok = torch.equal(got.cpu(), exp)
        out["equal"] += ok
        if not ok:
            out["mismatch"].append(f"{label}: {float((got.cpu() == exp).float().mean()):.3f}")

    for case in all_cases():
        if gh.is_stage1_kind(case.kind):
            model = copy.deepcopy(gh.load_stage1(case.path, case.kind, gh.stage1_ft_type(case))).to(dev)
            for run in gh.stage1_runs(case):
                x, call = gh.stage1_rd_inputs(case, run), case.call(run)
                exp = case.io[gh.output_name(call)][0]
                on = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in x.items()}
                for mode in ("reference", "batched", "static"):
                    noise = ReplayNoise.from_file(case.path / call["noise_file"])
                    opts = gh.decode_options(call)
                    if mode == "reference":
                        got = stage1_reference(
                            model, on["prompt"], x["target_len"], on["phones"], on["cond"], opts, noise
                        )
                    else:
                        opts = dataclasses.replace(opts, static_shapes=mode == "static")
                        (got,) = stage1_generate(
                            model,
                            [on["prompt"]],
                            [x["target_len"]],
                            None if x["phones"] is None else [on["phones"]],
                            None if x["cond"] is None else [on["cond"]],
                            opts,
                            [noise],
                        )
                    got = got.cpu()
                    if exp.shape[0] != x["target_len"]:
                        got = torch.cat([x["prompt"], got])
                    check(f"{case.kind}/{run}/{mode}", got, exp)
            io = case.io
            if "in.bb_x" in io:
                with torch.no_grad():
                    ph = model.phone_emb(io["in.bb_phone_id"].to(dev)) if "in.bb_phone_id" in io else None
                    pm = io.get("in.bb_phone_mask")
                    emb = model.diff_estimator(
                        io["in.bb_x"].to(dev),
                        io["in.bb_t"].to(dev),
                        io["in.bb_x_mask"].to(dev),
                        ph,
                        None if pm is None else pm.to(dev),
                    )
                out["bb_max_abs"] = max(
                    out["bb_max_abs"], float((emb.cpu() - io["mid.bb_embeds"]).abs().max())
                )
        elif case.kind in ("s2a_1layer", "s2a_full") and "rd" in case.meta["calls"]:
            io, call = case.io, case.call("rd")
            model = copy.deepcopy(gh.load_s2a(case.path)).to(dev)
            sem, prompt = io["in.rd_semantic_code"][0].to(dev), io["in.rd_prompt"][0].to(dev)
            gt = io["in.rd_gt_code"][0].to(dev) if "in.rd_gt_code" in io else None
            exp = io[gh.output_name(call)][0]
            for mode in ("reference", "batched", "fused", "static"):
                noise = ReplayNoise.from_file(case.path / call["noise_file"])
                opts = gh.decode_options(call)
                if mode == "reference":
                    got = s2a_reference(model, sem, prompt, opts, noise, gt)
                else:
                    opts = dataclasses.replace(
                        opts, fused_cfg=mode == "fused", static_shapes=mode == "static"
                    )
                    (got,) = s2a_generate(model, [sem], [prompt], opts, [noise], None if gt is None else [gt])
                check(f"{case.kind}/rd/{mode}", got, exp)
    ok = out["runs"] > 0 and out["equal"] == out["runs"]
    row(
        "golden",
        "replays token-equal (fp32, TF32 off)",
        ok,
        f"{out['equal']}/{out['runs']} {out['mismatch'][:3]}",
    )
    row("golden", "backbone max abs vs golden", out["bb_max_abs"] < 1e-4, f"{out['bb_max_abs']:.2e}")
    return out


TINY_TASKS = {
    "se": lambda d: [d / "noisy.wav"],
    "tse": lambda d: [d / "mix.wav", d / "enrol.wav"],
    "vc": lambda d: [d / "src.wav", d / "ref.wav"],
    "tts": lambda d: [d / "spk.wav"],
    "l2s": lambda d: [d / "noisy.wav"],  # the "video": features are synthesised (synthetic_video)
}


def _tiny_bundle(args) -> tuple[Path, Path]:
    from metis_cli.testing.tiny_bundle import write_tiny_bundle

    if "tiny" not in RES:
        work = Path(tempfile.mkdtemp(prefix="gc_tiny_"))
        bundle = write_tiny_bundle(work / "bundle", seed=0)
        for name, sec, seed in (("noisy", 0.9, 1), ("mix", 0.9, 2), ("enrol", 0.6, 3), ("src", 0.9, 4)):
            write_wav(work / f"{name}.wav", sec, seed)
        for name, sec, seed in (("ref", 0.6, 5), ("spk", 0.8, 6)):
            write_wav(work / f"{name}.wav", sec, seed)
        RES["tiny"] = (bundle, work)
    return RES["tiny"]


def sec_tiny(args, dev):
    from metis_cli import api

    bundle, work = _tiny_bundle(args)
    dtypes = ["float32", "bfloat16"] + (["float16"] if dev.type == "cuda" else [])
    out: dict = {}

    def load(task, device, **kw):
        vis = {"visual_checkpoint": bundle / "visual" / "model.pth"} if task == "l2s" else {}
        return api.load(
            task, checkpoint_dir=bundle, offline=True, device=device, bf16_cache=False, **vis, **kw, **TINY
        )

    fp32_reference_mode(dev)
    with no_g2p(), synthetic_video():
        for task, inputs in TINY_TASKS.items():
            text = {"duration": 0.6, **TTS_TEXT} if task == "tts" else None
            ins = [inputs(work)]
            res: dict = {}
            try:
                with cpu_noise():
                    ref = run_jobs(load(task, "cpu"), ins, torch.device("cpu"), text=text)
                    for dt in dtypes:
                        r = run_jobs(load(task, str(dev), dtype=dt), ins, dev, text=text)
                        res[dt] = {**agreement(ref, r), "snr_db": snr_db(ref["wavs"][0], r["wavs"][0])}
                        res[dt]["nonfinite"] = r["nonfinite"]
                        ok = r["nonfinite"] == 0 and (dt != "float32" or res[dt]["sem"] >= 0.9)
                        figs = f"sem {res[dt]['sem']} ac {res[dt]['ac']} snr {res[dt]['snr_db']} dB"
                        row("tiny", f"{task} {dt} vs CPU fp32", ok, figs + f" nonfinite {r['nonfinite']}")
                # native device noise: host syncs inside the loops (at most one per loop allowed)
                r = run_jobs(load(task, str(dev)), ins, dev, text=text, count_syncs=True)
                if dev.type == "cuda":
                    row(
                        "tiny",
                        f"{task} host syncs in loops",
                        r["syncs"] <= r["loops"],
                        f"{r['syncs']} in {r['loops']} loops",
                    )
            except Exception as exc:
                res["error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:300]
                row("tiny", f"{task}", False, res["error"])
            out[task] = res
        try:
            ins = [[work / "noisy.wav"], [work / "src.wav"], [work / "mix.wav"]]
            b1 = run_jobs(load("se", str(dev)), ins, dev)
            b3 = run_jobs(load("se", str(dev), batch_size=3), ins, dev)
            st = run_jobs(load("se", str(dev), batch_size=3), ins, dev, static=True)
            a13, a3s = agreement(b1, b3), agreement(b3, st)
            row("tiny", "se batch 3 vs batch 1 (fp32)", a13["sem"] >= 0.9, str(a13))
            row("tiny", "se static shapes vs default (batch 3)", a3s == {"sem": 1.0, "ac": 1.0}, str(a3s))
            if dev.type == "cuda":
                gr = run_jobs(load("se", str(dev), batch_size=3), ins, dev, static=True, graphs=True)
                row(
                    "tiny",
                    "se CUDA graphs vs eager (batch 3)",
                    agreement(st, gr)["sem"] >= 0.9,
                    str(agreement(st, gr)),
                )
                pipe = load("se", str(dev), low_memory=True)
                run_jobs(pipe, ins[:1], dev)
                res = sorted(pipe.engine.loader.resident)
                row(
                    "tiny",
                    "low memory: residency after a job",
                    "INFO",
                    f"{res} {gib(torch.cuda.memory_allocated(dev))} GiB",
                )
        except Exception as exc:
            row("tiny", "fast modes", False, str(exc)[:300])
    return out


def sec_fullgen(args, dev):
    root = Path(args.full_dir)
    if args.full_from_tiny:
        bundle, _ = _tiny_bundle(args)
        args.full_dir = str(bundle)
        row("fullgen", "checkpoints", "INFO", f"tiny bundle {bundle} (--full-from-tiny)")
        return {"dir": str(bundle)}
    mfs = bench_module("make_full_size")
    g = torch.Generator(device=dev).manual_seed(0) if dev.type == "cuda" else None
    cpu_draw = mfs.draw

    def draw(name, shape, gen):
        leaf = name.rsplit(".", 1)[-1]
        if g is not None and len(shape) >= 2 and math.prod(shape) > 0 and leaf not in ("weight_g", "alpha"):
            fan_in = max(1, math.prod(shape[1:]))
            scale = (0.3 if name.endswith("to_weight.weight") else 1.0) / math.sqrt(fan_in)
            return torch.empty(shape, device=dev).normal_(generator=g).mul_(scale).cpu()
        return cpu_draw(name, shape, gen)

    mfs.draw = draw
    t = time.perf_counter()
    mfs.main(["--dir", str(root), "--tasks", "se", "tts"])
    size = sum(p.stat().st_size for p in root.rglob("*.safetensors"))
    row("fullgen", "checkpoints", "INFO", f"{size / 1e9:.1f} GB in {time.perf_counter() - t:.0f} s")
    return {"dir": str(root), "gb": round(size / 1e9, 2)}


def stage1_profile(pipe, wav: Path, dev) -> dict:
    """Kernel launches and host syncs per stage-1 step (one SE stage-1 loop, profiled)."""
    from torch.profiler import ProfilerActivity, profile

    from metis_cli.core import decoding

    eng = pipe.engine
    job = pipe.make_job([wav], os.devnull, seed=1)
    c = eng.generator.conditions(job)
    model = eng.component("stage1")
    d = pipe.decoding()
    opts = decoding.DecodeOptions(steps=d.steps, cfg=d.cfg, fused_cfg=eng.options.fused_cfg)
    cond = None if c.finetune_cond is None else [c.finetune_cond.to(dev, eng.dtype)]
    args = ([c.prompt_semantic.to(dev)], [c.target_len], None, cond, opts)

    def once():
        return decoding.stage1_generate(
            model, *args, [decoding.TorchNoise(torch.Generator(device=dev).manual_seed(1))]
        )

    once()
    sync(dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        once()
        sync(dev)
    launches = syncs = 0
    for e in prof.key_averages():
        if "LaunchKernel" in e.key:
            launches += e.count
        if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"):
            syncs += e.count
    return {"launches_per_step": round(launches / d.steps), "host_syncs": syncs}


def sec_full(args, dev):
    from metis_cli import api

    root = Path(args.full_dir)
    work = Path(tempfile.mkdtemp(prefix="gc_full_"))
    secs = args.seconds
    se_in, tts_in = write_wav(work / "se.wav", secs, 1), write_wav(work / "prompt.wav", 3.0 * secs / 4, 2)
    dec = QUICK if args.quick else {}
    out: dict = {}
    fp32_reference_mode(dev)

    def load(task, **kw):
        t = time.perf_counter()
        p = api.load(task, checkpoint_dir=root, offline=True, device=str(dev), bf16_cache=False, **kw, **dec)
        if not kw.get("low_memory"):
            p.engine.load_all()
        sync(dev)
        return p, round(time.perf_counter() - t, 2)

    def one(label, task, inputs, text=None, pipe=None, ready=None, **inst):
        run_jobs(pipe, inputs[:1], dev, seed=100, text=text, **inst)  # warm-up (handles, autotune, graphs)
        r = run_jobs(pipe, inputs, dev, text=text, **inst)
        r["ready_s"] = ready
        r["rtf"] = round(r["wall"] / r["audio_s"], 4) if r["audio_s"] else None
        return r

    def figures(r):
        s = r["stages"]
        f = f"ready {r.get('ready_s')} s, run {r['wall']:.2f} s, RTF {r['rtf']}"
        f += f", cond {s.get('conditions', 0):.2f} st1 {r['stage1']:.2f} s2a1 {r['s2a_1layer']:.2f}"
        f += f" s2aF {r['s2a_full']:.2f} dec {s.get('decode', 0):.2f}"
        return f + (f", peak {r['peak_gib']} GiB" if "peak_gib" in r else "")

    tts_text = {"duration": 3.0 * secs / 4, **TTS_TEXT}
    last_se: dict = {}
    configs = [
        ("fp32", {}, {}),
        ("bf16", {"dtype": "bfloat16"}, {}),
        (
            "bf16 sdpa fused static",
            {"dtype": "bfloat16", "attention": "sdpa", "fused_cfg": True},
            {"static": True},
        ),
    ]
    graphs = ("bf16 sdpa fused static graphs", configs[-1][1], {"static": True, "graphs": True})
    with no_g2p():
        for task, inputs, text in (("se", [[se_in]], None), ("tts", [[tts_in]], tts_text)):
            ref = None
            for label, kw, inst in configs:
                if now() > args.budget - 90:
                    row("full", f"{task} {label}", "SKIP", "time budget")
                    continue
                try:
                    pipe, ready = load(task, **kw)
                    r = one(label, task, inputs, text, pipe, ready, **inst)
                    agree = "" if ref is None else f", agree vs fp32 {agreement(ref, r)}"
                    ref = ref or r
                    row("full", f"{task} {label}", r["nonfinite"] == 0, figures(r) + agree)
                    out[f"{task} {label}"] = public(r)
                    if task == "se":
                        last_se = r
                    if task == "se" and label == "bf16":
                        prof = stage1_profile(pipe, se_in, dev)
                        row("full", "se bf16 stage-1 launches / host syncs", "INFO", str(prof))
                        out["stage1_profile"] = prof
                    del pipe
                except Exception as exc:
                    row("full", f"{task} {label}", False, f"{type(exc).__name__}: {str(exc)[:200]}")
                free(dev)
        if dev.type == "cuda" and now() < args.budget - 150:  # compiling takes time: SE only, with margin
            label, kw, inst = graphs
            try:
                pipe, ready = load("se", **kw)
                r = one(label, "se", [[se_in]], None, pipe, ready, **inst)
                agree = f", agree vs eager bf16 static {agreement(last_se, r)}" if last_se else ""
                row("full", f"se {label}", r["nonfinite"] == 0, figures(r) + agree)
                out[f"se {label}"] = public(r)
                del pipe
            except Exception as exc:
                row("full", f"se {label}", False, f"{type(exc).__name__}: {str(exc)[:200]}")
            free(dev)
        elif dev.type == "cuda":
            row("full", f"se {graphs[0]}", "SKIP", "time budget")
        if dev.type == "cuda" and now() < args.budget - 70:
            try:
                pipe, ready = load("se", dtype="float16")
                r = one("fp16", "se", [[se_in]], None, pipe, ready)
                row("full", "se fp16", r["nonfinite"] == 0, figures(r) + f", nonfinite {r['nonfinite']}")
                del pipe
            except Exception as exc:  # NonFiniteError included: a FAIL row with the message
                row("full", "se fp16", False, f"{type(exc).__name__}: {str(exc)[:200]}")
            free(dev)
        thr = {}
        items = [
            [write_wav(work / f"b{i}.wav", secs, 10 + i)] for i in range(32 if dev.type == "cuda" else 4)
        ]
        try:
            pipe, _ = load("se", dtype="bfloat16", attention="sdpa", fused_cfg=True)
            for b in (1, 8, 32) if dev.type == "cuda" else (1, 4):
                if now() > args.budget - 30:
                    row("full", f"se throughput batch {b}", "SKIP", "time budget")
                    continue
                pipe.engine.loader.options = dataclasses.replace(pipe.engine.options, batch_size=b)
                n = max(b, 8) if dev.type == "cuda" else b
                r = run_jobs(pipe, items[:n], dev, static=True)
                thr[b] = round(r["audio_s"] / r["wall"], 2)
                row("full", f"se bf16 throughput batch {b}", "INFO", f"{thr[b]} x real time ({n} x {secs} s)")
            del pipe
        except Exception as exc:
            row("full", "se throughput", False, f"{type(exc).__name__}: {str(exc)[:200]}")
        free(dev)
        out["throughput"] = thr
    return out


def sec_train(args, dev):
    sys.path.insert(0, str(REPO / "tests" / "train"))
    from conftest import synth_pairs, write_manifest  # tests/train/conftest.py

    bundle, _ = _tiny_bundle(args)
    work = Path(tempfile.mkdtemp(prefix="gc_train_"))
    data = synth_pairs(work / "data", 4, seed=1)
    man = write_manifest(data, "se")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    base = [sys.executable, "-m", "metis_cli.cli", "finetune", "--task", "se", "--data", str(man),
            "--out", str(work / "ft"), "--base", "metis-base", "--lora-r", "2", "--max-steps", "3",
            "--batch-size", "2", "--checkpoint-dir", str(bundle), "--cache-dir", str(work / "cache"),
            "--json"]  # fmt: skip
    out = {}
    for label, extra, hide in (
        (f"2 steps on {dev}", ["--device", str(dev), "--stop-after", "2"], False),
        ("--resume on cpu (GPU hidden)", ["--device", "cpu", "--resume"], True),
    ):
        e = dict(env, CUDA_VISIBLE_DEVICES="") if hide else env
        p = subprocess.run(base + extra, capture_output=True, text=True, env=e, timeout=150)
        tail = p.stderr.strip().splitlines()[-1:] if p.returncode else []
        out[label] = {"rc": p.returncode, "tail": tail}
        row("train", label, p.returncode == 0, f"rc {p.returncode} {tail}")
        if p.returncode:
            break
    return out


def sec_pytest(args, dev):
    files = [
        "tests/core/test_decoding.py",
        "tests/core/test_devices.py",
        "tests/engine/test_fast_modes.py",
        "tests/assets/test_weight_cache.py",
    ]
    left = max(30, int(args.budget - now() - 5))
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", "-m", "not slow", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=left,
    )
    tail = p.stdout.strip().splitlines()[-1:] if p.stdout.strip() else [p.stderr[-200:]]
    row("pytest", "sampling/devices/fast modes/weight cache, GPU visible", p.returncode == 0, tail[-1])
    return {"rc": p.returncode, "tail": p.stdout.strip().splitlines()[-10:]}


SECTIONS = [  # name, function, estimated seconds on an H100-class GPU
    ("env", sec_env, 2),
    ("golden", sec_golden, 15),
    ("tiny", sec_tiny, 60),
    ("fullgen", sec_fullgen, 45),
    ("full", sec_full, 120),
    ("train", sec_train, 40),
    ("pytest", sec_pytest, 60),
]


def table() -> None:
    """The one table: every check, its result and its figures."""
    w = [max(len(r[i]) for r in ROWS + [("section", "check", "result", "")]) for i in range(3)]
    line = f"+{'-' * (w[0] + 2)}+{'-' * (w[1] + 2)}+{'-' * (w[2] + 2)}+{'-' * 10}"
    print("\n===== metis GPU check =====")
    print(line)
    print(f"| {'section':<{w[0]}} | {'check':<{w[1]}} | {'result':<{w[2]}} | figures")
    print(line)
    for s, c, r, f in ROWS:
        print(f"| {s:<{w[0]}} | {c:<{w[1]}} | {r:<{w[2]}} | {f}")
    print(line)
    fails = sum(r[2] == "FAIL" for r in ROWS)
    print(f"{len(ROWS)} rows, {fails} FAIL, total {now():.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    ap.add_argument("--budget", type=float, default=360.0, help="seconds for all sections")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sections", default=",".join(s[0] for s in SECTIONS))
    ap.add_argument("--full-dir", default="/tmp/metis_full_size")
    ap.add_argument("--full-from-tiny", action="store_true", help="the full section on the tiny bundle")
    ap.add_argument(
        "--seconds", type=float, default=4.0, help="SE input / TTS target length of the full section"
    )
    ap.add_argument("--quick", action="store_true", help="2-step decoding in the full section (CPU runs)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    def on_term(signum, frame):  # the hard time limit (gpu_check.sh): still print the table
        row("run", "hard time limit", False, f"signal {signum} at {now():.0f} s; later checks did not run")
        table()
        os._exit(124)

    signal.signal(signal.SIGTERM, on_term)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    wanted = args.sections.split(",")
    for name, fn, est in SECTIONS:
        if name not in wanted:
            continue
        if now() + est > args.budget:
            row(name, "section", "SKIP", f"time budget ({est} s needed, {args.budget - now():.0f} s left)")
            continue
        log(f"== {name}")
        t = time.perf_counter()
        try:
            RES["sections"][name] = {"status": "ok", **fn(args, dev)}
        except Exception as exc:
            RES["sections"][name] = {"status": "error", "error": traceback.format_exc()[-2000:]}
            row(name, "section", False, f"{type(exc).__name__}: {str(exc)[:200]}")
        RES["sections"][name]["seconds"] = round(time.perf_counter() - t, 1)
        RES["rows"] = ROWS
        (args.out / "gpu_check.json").write_text(json.dumps(RES, indent=1, default=str))
    table()
    return 1 if any(r[2] == "FAIL" for r in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())

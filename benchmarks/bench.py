"""Full-size benchmark of a task through the real engine (not part of the test suite).

    python benchmarks/make_full_size.py                       # once: ~9 GB into .bench_cache/
    python benchmarks/bench.py --task se --seconds 4          # one configuration
    python benchmarks/bench.py --task se --seconds 4 --compare dtype=float32 dtype=bfloat16
    python benchmarks/bench.py --task se --seconds 4 --compare batch_size=1 batch_size=4 --jobs 4
    python benchmarks/bench.py --task se --seconds 4 --logit-error
    python benchmarks/bench.py --task tts --seconds 3 --tts-seconds 3 --compare dtype=float32 dtype=bfloat16

Every configuration runs in a fresh subprocess (clean peak RSS, cold Python, warm page cache),
at the card's official default decoding settings unless `--set steps=...` overrides them.
Per configuration it reports: model load time per component ("models ready" = all of them,
unless `low_memory` where they load lazily), wall and CPU seconds per stage (conditions = audio
+ SSL + codec prompts, stage 1, S2A 1-layer, S2A full, decode), backbone passes per model,
RTF, peak RSS, and the tokens (semantic tokens and acoustic codes) it generated. With two
configurations, the second is compared with the first: ratios of every figure and the token
agreement at the same seed and input (fraction of identical semantic tokens / acoustic codes).

`--logit-error` runs one forward of stage 1 and of each S2A model in float32 and in bfloat16
on the same random inputs and reports max-abs and relative (max-abs / max |fp32|) logit error.

Against the hardware: per stage the GEMM FLOPs of the schedule that ran (its sampling calls
replayed on the meta device under torch's FlopCounterMode: exact shapes, no arithmetic), the
achieved GFLOP/s (FLOPs / stage wall time) and that as a fraction of a matmul microbenchmark run
in the same invocation at the models' shapes (fp32 and bf16; the fraction uses the
configuration's dtype).

Machines here are noisy and shared: compare figures from one invocation only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO_ROOT / ".bench_cache"
FIXTURE = {"se": "tests/fixtures/wav/se/noise.wav", "tts": "tests/fixtures/wav/tts/prompt.wav"}
ENGINE_KEYS = {"dtype", "attention", "fused_cfg", "batch_size", "low_memory", "device", "bf16_cache"}
TTS_TEXT = "The quick brown fox jumps over the lazy dog near the quiet river bank."
TTS_PROMPT_TEXT = "This is the voice of the speaker in the prompt."


# ------------------------------------------------------------------------------------ inputs
def speech_like(seconds: float, sr: int = 24000, seed: int = 0) -> np.ndarray:
    """A speech-like test signal (N,) float32: a harmonic source with a gliding f0, syllable-rate
    amplitude modulation, pauses and a little noise. Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t) + 10 * np.sin(2 * np.pi * 2.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    src = sum(np.sin(k * phase) / k for k in range(1, 20))
    env = np.clip(np.sin(2 * np.pi * 4.0 * t) * 0.5 + 0.6, 0, None) * (np.sin(2 * np.pi * 0.45 * t) > -0.7)
    wav = 0.15 * src * env + 0.01 * rng.standard_normal(n)
    return (0.5 * wav / max(np.abs(wav).max(), 1e-6)).astype(np.float32)


def make_input(path: Path, seconds: float, source: str | None) -> None:
    """Write the benchmark input: a fixture/given wav looped to `seconds`, or `speech_like`."""
    from metis_cli.media import audio

    if source:
        wav = audio.load_audio(Path(source), 24000)
        wav = np.tile(wav, math.ceil(seconds * 24000 / len(wav)))[: int(round(seconds * 24000))]
    else:
        wav = speech_like(seconds)
    audio.write_wav_atomic(path, wav, 24000)


# ------------------------------------------------------------------------------------ worker
def _rss_now() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _AnonPeak:
    """Samples RssAnon (private, non file-backed memory) every 20 ms in a thread; `peak` bytes.

    Peak RSS also counts the touched pages of memory-mapped checkpoints, which are page cache
    that the kernel can drop; the anonymous peak is the memory the process really needs."""

    def __init__(self) -> None:
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("RssAnon:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            self._stop.wait(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


class _Recorder:
    """Wraps the sampling entry points the engine calls to time S2A per model, count backbone
    passes and keep the generated tokens (the engine imports them at call time)."""

    def __init__(self, stats: dict) -> None:
        from metis_cli.core import decoding

        self.stats, self.sampling = stats, decoding
        self.semantic: list = []
        self.codes: list = []
        self.passes: dict[str, int] = {}
        self.rows: dict[str, int] = {}
        self._orig = (decoding.stage1_generate, decoding.s2a_generate, decoding.metis_semantic_to_acoustic)
        orig_s1, orig_s2a, orig_m = self._orig

        self.calls: list[tuple[str, Any, tuple, dict]] = []  # (stage, model, args, kwargs)

        def count(name: str, model: Any, fn, *a, **k):
            self.calls.append((name, model, a, k))
            net = model.diff_estimator
            p0, r0 = net.passes, net.rows
            w0, c0 = time.perf_counter(), time.process_time()
            out = fn(model, *a, **k)
            w, c = time.perf_counter() - w0, time.process_time() - c0
            self.passes[name] = self.passes.get(name, 0) + net.passes - p0
            self.rows[name] = self.rows.get(name, 0) + net.rows - r0
            self.stats.setdefault(name, [0.0, 0.0])
            self.stats[name][0] += w
            self.stats[name][1] += c
            return out

        def stage1(model, *a, **k):
            out = count("stage1", model, orig_s1, *a, **k)
            self.semantic.extend(o.cpu() for o in out)
            return out

        def s2a(model, *a, **k):
            return count("s2a_1layer" if model.num_quantizer == 1 else "s2a_full", model, orig_s2a, *a, **k)

        def s2a_all(*a, **k):
            out = orig_m(*a, **k)
            self.codes.extend(o.cpu() for o in out)
            return out

        decoding.stage1_generate, decoding.s2a_generate = stage1, s2a
        decoding.metis_semantic_to_acoustic = s2a_all

    def restore(self) -> None:
        """Put the original sampling functions back."""
        s = self.sampling
        s.stage1_generate, s.s2a_generate, s.metis_semantic_to_acoustic = self._orig

    def gemm_flops(self) -> dict[str, float]:
        """GEMM FLOPs per stage of the recorded calls (see `schedule_flops`)."""
        stage1, s2a = self._orig[0], self._orig[1]
        return schedule_flops([(n, m, stage1 if n == "stage1" else s2a, a, k) for n, m, a, k in self.calls])


def _meta_twin(model: Any) -> Any:
    """The same architecture built on the meta device (no memory), same attention implementation."""
    import torch

    with torch.device("meta"):
        twin = type(model)(model.cfg, attn_impl=model.diff_estimator.attn_impl)
    return twin.to(model.dtype).eval()


def _on_meta(x: Any) -> Any:
    import torch

    from metis_cli.core.decoding import TorchNoise

    if isinstance(x, torch.Tensor):
        return x.to("meta")
    if isinstance(x, list | tuple):
        return type(x)(_on_meta(v) for v in x)
    if hasattr(x, "uniform"):  # a noise source: any draws do (shapes do not depend on values)
        return TorchNoise()
    return x


def schedule_flops(calls: list[tuple[str, Any, Any, tuple, dict]]) -> dict[str, float]:
    """GEMM FLOPs (matmul, linear, bmm, SDPA) per stage of sampling calls (stage, model, fn, args,
    kwargs), replayed on meta twins: the loops' shapes depend only on lengths and steps."""
    from torch.utils.flop_counter import FlopCounterMode

    out: dict[str, float] = {}
    for name, model, fn, a, k in calls:
        twin = _meta_twin(model)
        with FlopCounterMode(display=False) as counter:
            fn(twin, *_on_meta(a), **{key: _on_meta(v) for key, v in k.items()})
        out[name] = out.get(name, 0.0) + float(counter.get_total_flops())
    return out


def matmul_rates(seconds: float = 0.5, m: int = 600, h: int = 1024) -> dict[str, float]:
    """GFLOP/s of torch.matmul at the backbones' shapes ((m, h) x (h, 4h) and (m, 4h) x (4h, h),
    m ~ the frames of a pass), fp32 and bf16, on this machine's CPU threads."""
    import torch

    g = torch.Generator().manual_seed(0)
    rates = {}
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a, b = torch.randn(m, h, generator=g).to(dt), torch.randn(h, 4 * h, generator=g).to(dt)
        c, d = torch.randn(m, 4 * h, generator=g).to(dt), torch.randn(4 * h, h, generator=g).to(dt)
        torch.matmul(a, b), torch.matmul(c, d)  # warm-up
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 2:
            torch.matmul(a, b)
            torch.matmul(c, d)
            n += 1
        rates[name] = 2 * (2 * m * h * 4 * h) * n / (time.perf_counter() - t0) / 1e9
    return rates


def worker(cfg: dict) -> dict:
    """Run one configuration in this process; returns the result record."""
    import torch

    from metis_cli import api
    from metis_cli.engine import peak_rss_bytes

    torch.manual_seed(0)
    tmp = Path(cfg["tmp"])
    opts = cfg["options"]
    engine_kw = {k: v for k, v in opts.items() if k in ENGINE_KEYS}
    decoding = {k: v for k, v in opts.items() if k not in ENGINE_KEYS}
    rss0 = _rss_now()
    anon = _AnonPeak()
    t0 = time.perf_counter()
    pipe = api.load(cfg["task"], checkpoint_dir=cfg["cache"], offline=True, **engine_kw, **decoding)
    preload = not engine_kw.get("low_memory", False)
    if preload:
        pipe.engine.load_all()
    ready = time.perf_counter() - t0
    rss_ready = _rss_now()
    timing: dict[str, list[float]] = {}
    rec = _Recorder(timing)
    text = {}
    if cfg["task"] == "tts":  # the input wav is the speaker prompt; fixed target length
        text = {
            "text": TTS_TEXT,
            "language": "en",
            "prompt_text": TTS_PROMPT_TEXT,
            "prompt_language": "en",
            "duration": cfg.get("tts_seconds", 3.0),
        }
    jobs = [
        pipe.make_job(cfg["inputs"], tmp / f"out{i}.wav", seed=cfg["seed"] + i, **text)
        for i in range(cfg["jobs"])
    ]
    w0, c0 = time.perf_counter(), time.process_time()
    try:
        results = list(pipe.engine.run(jobs, pipe.decoding()))
    finally:
        rec.restore()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    peak_anon = anon.stop()
    flops = rec.gemm_flops() if cfg.get("flops", True) else {}
    bad = [r.error for r in results if not r.ok]
    if bad:
        raise SystemExit(f"job failed: {bad[0]}")
    st = pipe.engine.stats
    stages = {k: {"wall": st.wall[k], "cpu": st.cpu[k]} for k in st.wall}
    for name, (w, c) in timing.items():
        stages[name] = {"wall": w, "cpu": c}  # S2A split per model (stage1 equals the engine's)
    audio_s = sum(r.audio_seconds for r in results)
    torch.save({"semantic": rec.semantic, "codes": rec.codes}, tmp / "tokens.pt")
    return {
        "task": cfg["task"],
        "options": opts,
        "jobs": cfg["jobs"],
        "audio_seconds": audio_s,
        "load": {k: round(v, 3) for k, v in st.load.items()},
        "models_ready_s": ready if preload else None,
        "run_wall_s": wall,
        "run_cpu_s": cpu,
        "total_wall_s": ready + wall,
        "rtf": wall / audio_s,
        "stages": stages,
        "passes": rec.passes,
        "rows": rec.rows,
        "rss_start_bytes": rss0,
        "rss_ready_bytes": rss_ready,
        "peak_rss_bytes": max(peak_rss_bytes(), rss_ready, _rss_now()),  # the kernel updates maxrss lazily
        "peak_anon_bytes": peak_anon,
        "semantic_frames": [int(s.shape[0]) for s in rec.semantic],
        "torch_threads": torch.get_num_threads(),
        "tokens_file": str(tmp / "tokens.pt"),
        "gemm_flops": flops,
    }


# ------------------------------------------------------------------------------------ logit error
def logit_error(cache: str, task: str, seconds: float, seed: int = 0, device: str = "auto") -> dict:
    """One forward of stage 1 and each S2A model, float32 vs bfloat16, on identical inputs
    (drawn on the CPU from `seed`, then moved to the engine's device)."""
    import torch

    from metis_cli.assets.cards import ModelStore
    from metis_cli.engine import Engine, EngineOptions

    frames = int(seconds * 50)
    g = torch.Generator().manual_seed(seed)
    out: dict[str, dict] = {}
    logits: dict[str, dict[str, torch.Tensor]] = {}
    for dtype in ("float32", "bfloat16"):
        opts = EngineOptions(dtype=dtype, device=device)
        eng = Engine(task, store=ModelStore(cache, offline=True), options=opts)
        for name in ("stage1", "s2a_1layer", "s2a_full"):
            model = eng.component(name)
            g.manual_seed(seed)
            logits.setdefault(name, {})[dtype] = _one_forward(name, model, frames, g).float().cpu()
            eng.release(name)
    for name, d in logits.items():
        ref, fast = d["float32"], d["bfloat16"]
        err = (fast - ref).abs()
        out[name] = {
            "max_abs": float(err.max()),
            "mean_abs": float(err.mean()),
            "rel_max": float(err.max() / ref.abs().max()),
            "ref_std": float(ref.std()),
            "top1_agree": float((fast.argmax(-1) == ref.argmax(-1)).float().mean()),
        }
    return out


def _one_forward(name: str, model, frames: int, g) -> Any:
    """Logits (1, L, V) of one mid-schedule step (t=0.5, half the target masked), on the model's
    device; the random inputs come from the CPU generator `g` (the same numbers on any device)."""
    import torch

    dev = model.cond_emb.weight.device

    def on(x):
        return x.to(dev)

    with torch.inference_mode():
        dt = model.dtype
        lp, L = frames // 3, frames
        net = model.diff_estimator
        t = torch.full((1,), 0.5, device=dev)
        masked = on(torch.rand(1, L, generator=g) < 0.5)
        if name == "stage1":
            V = model.cfg.cond_codebook_size
            prompt = on(torch.randint(0, V, (1, lp), generator=g))
            seq = on(torch.randint(0, V, (1, L), generator=g))
            cur = torch.where(masked[..., None], model.mask_token().to(dt), model.cond_emb(seq))
            x = torch.cat([model.cond_emb(prompt), cur], dim=1)
            if model.has_adapter:
                feat = on(torch.randn(1, lp + L, model.cfg.cond_dim, generator=g))
                x = x + model.adapt(feat)
            return model.to_logit(net.run(x, t)[:, lp:])
        V, Q = model.cfg.codebook_size, model.num_quantizer
        layer = 0 if Q == 1 else 1
        sem = on(torch.randint(0, model.cfg.cond_codebook_size, (1, lp + L), generator=g))
        prompt = on(torch.randint(0, V, (1, lp, Q), generator=g))
        gt = on(torch.randint(0, V, (1, L, layer), generator=g))
        seq = on(torch.randint(0, V, (1, L), generator=g))
        cum = model.embed_codes(gt) if layer else 0
        cur = cum + torch.where(masked[..., None], model.mask_token().to(dt), model.token_emb[layer](seq))
        cur = cur + model.mask_token().to(dt) * (Q - 1 - layer)
        x = torch.cat([model.embed_codes(prompt), cur], dim=1) + net.cond_mlp(model.layer_cond(sem, layer))
        return model.to_logits[layer](net.run(x, t)[:, lp:])


# ------------------------------------------------------------------------------------ parent
def parse_options(items: list[str]) -> dict[str, Any]:
    """["dtype=bfloat16", "batch_size=4", "steps=10"] -> typed dict (json literals or strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, _, val = item.partition("=")
        try:
            out[key] = json.loads(val)
        except json.JSONDecodeError:
            out[key] = val
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def run_config(args: argparse.Namespace, options: dict, tmp: Path, inputs: list[str]) -> dict:
    cfg = {
        "task": args.task,
        "cache": str(args.cache),
        "options": options,
        "inputs": inputs,
        "seed": args.seed,
        "jobs": args.jobs or int(options.get("batch_size", 1)),
        "tts_seconds": args.tts_seconds,
        "tmp": str(tmp),
    }
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(cfg)], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"configuration {options} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agreement(a: dict, b: dict) -> dict:
    """Fraction of identical semantic tokens and acoustic codes (all, codebook 0) of two runs."""
    import torch

    ta, tb = torch.load(a["tokens_file"]), torch.load(b["tokens_file"])

    def frac(xs, ys, sl=lambda t: t):
        same = total = 0
        for x, y in zip(xs, ys, strict=True):
            x, y = sl(x), sl(y)
            n = min(x.shape[0], y.shape[0])
            same += int((x[:n] == y[:n]).sum())
            total += max(x.numel(), y.numel())
        return same / max(total, 1)

    return {
        "semantic": frac(ta["semantic"], tb["semantic"]),
        "acoustic_all": frac(ta["codes"], tb["codes"]),
        "acoustic_cb0": frac(ta["codes"], tb["codes"], lambda t: t[:, 0]),
    }


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def _achieved(r: dict, stage: str) -> float | None:
    flops, wall = r.get("gemm_flops", {}).get(stage), r["stages"].get(stage, {}).get("wall")
    return flops / wall / 1e9 if flops and wall else None


def _fraction(r: dict, stage: str, rates: dict[str, float]) -> float | None:
    got = _achieved(r, stage)
    dtype = r.get("options", {}).get("dtype", "float32")
    return got / rates[dtype] if got and dtype in rates else None


def table(
    results: list[dict], agree: dict | None, rates: dict[str, float] | None = None, rows: int = 600
) -> None:
    from rich.console import Console
    from rich.table import Table

    tab = Table(title="metis benchmark (wall s / cpu s unless noted)")
    tab.add_column("figure")
    names = [r.get("label") or "defaults" for r in results]
    for n in names:
        tab.add_column(n, justify="right")
    if len(results) == 2:
        tab.add_column("ratio 2/1", justify="right")

    def row(label: str, vals: list[float | None], fmt: str = "{:.2f}") -> None:
        cells = ["-" if v is None else fmt.format(v) for v in vals]
        if len(vals) == 2:
            ok = all(v not in (None, 0) for v in vals)
            cells.append(f"{vals[1] / vals[0]:.2f}x" if ok else "-")
        tab.add_row(label, *cells)

    row("models ready (s)", [r["models_ready_s"] for r in results])
    comps = sorted({c for r in results for c in r["load"]})
    for c in comps:
        row(f"  load {c}", [r["load"].get(c) for r in results])
    for stage in ("conditions", "stage1", "s2a_1layer", "s2a_full", "s2a", "decode"):
        row(f"{stage} wall", [r["stages"].get(stage, {}).get("wall") for r in results])
        row(f"{stage} cpu", [r["stages"].get(stage, {}).get("cpu") for r in results])
    row("run wall (s)", [r["run_wall_s"] for r in results])
    row("load + run (s)", [r["total_wall_s"] for r in results])
    row("audio (s)", [r["audio_seconds"] for r in results])
    row("RTF (run)", [r["rtf"] for r in results], "{:.3f}")
    row("throughput (audio s / wall s)", [r["audio_seconds"] / r["run_wall_s"] for r in results], "{:.3f}")
    for m in ("stage1", "s2a_1layer", "s2a_full"):
        row(f"passes {m}", [r["passes"].get(m) for r in results], "{:.0f}")
    row("peak RSS (GiB)", [r["peak_rss_bytes"] / 2**30 for r in results])
    row("peak anonymous RSS (GiB)", [r.get("peak_anon_bytes", 0) / 2**30 for r in results])
    row("RSS models ready (GiB)", [r["rss_ready_bytes"] / 2**30 for r in results])
    for m in ("stage1", "s2a_1layer", "s2a_full"):
        row(f"GEMM TFLOP {m}", [r.get("gemm_flops", {}).get(m, 0) / 1e12 or None for r in results], "{:.3f}")
        row(f"GEMM GFLOP/s {m}", [_achieved(r, m) for r in results], "{:.1f}")
        if rates:
            row(f"  % of matmul rate {m}", [_fraction(r, m, rates) for r in results], "{:.0%}")
    Console().print(tab)
    if rates:
        Console().print(
            f"matmul microbenchmark (this invocation, backbone shapes, {rows} rows): "
            + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items())
        )
    if agree:
        Console().print(
            "token agreement of config 2 vs config 1 (same seed/input): "
            + ", ".join(f"{k} {v:.3f}" for k, v in agree.items())
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        print(json.dumps(worker(json.loads(argv[1]))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="se", choices=["se", "tts"])
    p.add_argument("--seconds", type=float, default=4.0, help="input length (s)")
    p.add_argument("--tts-seconds", type=float, default=3.0, help="TTS: speech to generate (s)")
    p.add_argument("--input", help="wav to loop to --seconds (default: synthesised speech-like signal)")
    p.add_argument("--fixture", action="store_true", help="use the task's fixture wav as --input")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=0, help="jobs per run (default: batch_size)")
    p.add_argument("--set", nargs="*", default=[], help="options for every config, key=value")
    p.add_argument("--compare", nargs=2, metavar="KEY=VAL[,KEY=VAL]", help="two configurations")
    p.add_argument("--logit-error", action="store_true", help="fp32 vs bf16 logits per stage")
    p.add_argument("--device", default="auto", help="--logit-error: the engine's device (auto, cpu, cuda...)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument(
        "--matmul-m",
        type=int,
        default=0,
        help="rows of the matmul microbenchmark (default: the run's target frames, else 600)",
    )
    p.add_argument(
        "--save-outputs",
        type=Path,
        help="copy each configuration's tokens.pt and output wavs to DIR/c<i>/ (token identity checks)",
    )
    args = p.parse_args(argv)
    if not args.cache.is_dir():
        raise SystemExit(f"{args.cache}: no checkpoints; run benchmarks/make_full_size.py first")
    if args.logit_error:
        res = logit_error(str(args.cache), args.task, args.seconds, args.seed, args.device)
        print(json.dumps(res, indent=1))
        if args.json:
            args.json.write_text(json.dumps(res, indent=1))
        return 0
    base = parse_options(args.set)
    configs, labels = [base], [" ".join(args.set)]
    if args.compare:
        configs = [{**base, **parse_options(c.split(","))} for c in args.compare]
        labels = list(args.compare)
    with tempfile.TemporaryDirectory(prefix="metis_bench_") as td:
        src = args.input or (str(REPO_ROOT / FIXTURE[args.task]) if args.fixture else None)
        wav = Path(td) / "input.wav"
        make_input(wav, args.seconds, src)
        results = []
        for i, opts in enumerate(configs):
            sub = Path(td) / f"c{i}"
            sub.mkdir()
            results.append({"label": labels[i], **run_config(args, opts, sub, [str(wav)])})
        agree = agreement(results[0], results[1]) if len(results) == 2 else None
        if args.save_outputs:
            import shutil

            for i in range(len(results)):
                dst = args.save_outputs / f"c{i}"
                dst.mkdir(parents=True, exist_ok=True)
                for f in (Path(td) / f"c{i}").iterdir():
                    if f.suffix in (".pt", ".wav"):
                        shutil.copy2(f, dst / f.name)
        for r in results:
            r.pop("tokens_file")
    # the microbenchmark at the rows of the run's passes (its target frames), unless given
    frames = [n for r in results for n in r.get("semantic_frames", [])]
    m = args.matmul_m or (max(frames) if frames else 600)
    rates = matmul_rates(m=m)
    table(results, agree, rates, m)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"results": results, "agreement": agree, "matmul_gflops": rates, "matmul_m": m}, indent=1
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Op-by-op CPU profile of one backbone pass per model at full size (not part of the test suite).

    python benchmarks/profile_passes.py                       # fp32 (reference), SE 4 s shapes
    python benchmarks/profile_passes.py --dtype bfloat16 --attention sdpa
    python benchmarks/profile_passes.py --out .bench_cache/profiles/fp32

Loads stage 1 and both S2A models from the full-size random checkpoints (`make_full_size.py`)
through the real engine loader, builds the inputs of one mid-schedule decoding step of an SE
job (`--frames` target frames, no prompt: 200 = 4 s) and reports, per model:

* the first (cold) pass: wall time and minor / major page faults (first touch of memory-mapped
  weights), then `--repeats` warm passes (median wall time);
* a "GEMM only" pass: the same weights, the backbone's linears (and the attention products)
  called alone on tensors of the pass's shapes, nothing else: the GEMM floor of that pass;
* a torch.profiler table of one warm pass (plus the sampler step after it: the logits head,
  CFG for the full S2A model, top-k, Gumbel, softmax, re-mask), sorted by self CPU time, and
  the share of GEMM ops (mm / addmm / bmm / SDPA / oneDNN matmul) in it.

Under load (a shared machine) absolute times are not meaningful; the shares and the op counts
are. `--out DIR` writes each table and a JSON summary there.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO_ROOT / ".bench_cache"

GEMM_OPS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "mkldnn::_linear_pointwise",
    "aten::mkldnn_linear",
)


def faults() -> tuple[int, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_majflt


def load(cache: Path, dtype: str, attention: str):
    from metis_cli.assets.cards import ModelStore
    from metis_cli.engine import Engine, EngineOptions

    opts = EngineOptions(dtype=dtype, attention=attention, device="cpu")
    eng = Engine("se", store=ModelStore(str(cache), offline=True), options=opts)
    t0 = time.perf_counter()
    models = {n: eng.component(n) for n in ("stage1", "s2a_1layer", "s2a_full")}
    return eng, models, time.perf_counter() - t0


def make_step(name: str, model, frames: int, seed: int = 0):
    """(pass, step) closures for one mid-schedule step of model `name` on random inputs.

    pass(): the backbone forward(s) of one decoding step (two for the CFG of the full S2A);
    step(): pass + logits head + the sampler's work on the logits (no model state changes)."""
    from metis_cli.core import decoding

    g = torch.Generator().manual_seed(seed)
    dt = model.dtype
    net = model.diff_estimator
    L = frames
    t = torch.full((1,), 0.5)
    masked = torch.rand(1, L, generator=g) < 0.5
    opts = decoding.DecodeOptions(steps=10, cfg=0.0, temperature=0.9)
    if name == "stage1":
        V = model.cfg.cond_codebook_size
        seq = torch.randint(0, V, (1, L), generator=g)
        feat = torch.randn(1, L, model.cfg.cond_dim, generator=g).to(dt)
        with torch.inference_mode():
            adapted = model.adapt(feat)
        x = torch.where(masked[..., None], model.mask_token().to(dt), model.cond_emb(seq)) + adapted
        x = x.detach()
        head = model.to_logit

        def one_pass():
            return [net.run(x, t)]

    else:
        V, Q = model.cfg.codebook_size, model.num_quantizer
        layer = 0 if Q == 1 else 1
        sem = torch.randint(0, model.cfg.cond_codebook_size, (1, L), generator=g)
        gt = torch.randint(0, V, (1, L, layer), generator=g)
        seq = torch.randint(0, V, (1, L), generator=g)
        with torch.inference_mode():
            cum = model.embed_codes(gt) if layer else 0
            cur = cum + torch.where(masked[..., None], model.mask_token().to(dt), model.token_emb[layer](seq))
            cur = cur + model.mask_token().to(dt) * (Q - 1 - layer)
            cond_l = model.layer_cond(sem, layer)
            x = (cur + net.cond_mlp(cond_l)).detach()
            xu = (cur + net.cond_mlp(cond_l)).detach() if Q > 1 else None  # no prompt: same length
        head = model.to_logits[layer]
        if Q > 1:
            opts = decoding.DecodeOptions(steps=16, cfg=2.5, temperature=1.5)

        def one_pass():
            out = [net.run(x, t)]
            if xu is not None:
                out.append(net.run(xu, t))
            return out

    steps = opts.steps
    t_list = decoding.time_grid(steps)
    noise = decoding.TorchNoise(torch.Generator().manual_seed(seed + 1))

    def one_step():
        outs = one_pass()
        g_ = outs[0] if len(outs) == 1 else decoding.cfg_combine(outs[0], outs[1], opts.cfg, opts.rescale_cfg)
        logits = head(g_).float()
        slot = decoding._Slot(L, noise)
        slot.mask, slot.seq = torch.ones(1, L, dtype=torch.bool), torch.zeros(1, L, dtype=torch.long)
        slot.finite = [torch.isfinite(logits).all()]
        decoding._sample_step(slot, logits, 1, t_list, opts)
        return slot.seq

    return one_pass, one_step, x


def gemm_only(model, x: torch.Tensor, passes: int):
    """The backbone's GEMMs alone (linears with the model's own weights, attention products) on
    tensors of the pass's shapes: a floor for the pass at this torch/BLAS build."""
    import torch.nn.functional as F

    net = model.diff_estimator
    B, N, H = x.shape
    nh, hd = net.num_heads, H // net.num_heads
    inner = torch.randn(B, N, 4 * H).to(x.dtype)

    def run():
        for _ in range(passes):
            for layer in net.layers:
                a, m = layer.self_attn, layer.mlp
                q = F.linear(x, a.q_proj.weight).view(B, N, nh, hd).transpose(1, 2)
                k = F.linear(x, a.k_proj.weight).view(B, N, nh, hd).transpose(1, 2)
                v = F.linear(x, a.v_proj.weight).view(B, N, nh, hd).transpose(1, 2)
                w = torch.matmul(q, k.transpose(2, 3))
                torch.matmul(w, v)
                F.linear(x, a.o_proj.weight)
                F.linear(x, m.gate_proj.weight)
                F.linear(x, m.up_proj.weight)
                F.linear(inner, m.down_proj.weight)

    return run


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.inference_mode():
            fn()
        out.append(time.perf_counter() - t0)
    return out


def profile_table(fn, rows: int) -> tuple[str, dict]:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        fn()
    avg = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in avg)
    gemm = sum(e.self_cpu_time_total for e in avg if e.key in GEMM_OPS)
    calls = sum(e.count for e in avg)
    gemm_calls = sum(e.count for e in avg if e.key in GEMM_OPS)
    casts = sum(e.count for e in avg if e.key in ("aten::to", "aten::_to_copy", "aten::copy_"))
    ops = {
        e.key: {"self_ms": e.self_cpu_time_total / 1e3, "calls": e.count}
        for e in sorted(avg, key=lambda e: -e.self_cpu_time_total)
    }
    summary = {
        "self_total_ms": total / 1e3,
        "gemm_self_ms": gemm / 1e3,
        "gemm_share": gemm / total if total else 0.0,
        "op_calls": calls,
        "gemm_calls": gemm_calls,
        "cast_copy_calls": casts,
        "ops": ops,
    }
    return avg.table(sort_by="self_cpu_time_total", row_limit=rows), summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--attention", default="eager", choices=["eager", "sdpa"])
    p.add_argument("--frames", type=int, default=200, help="target frames (50 per second)")
    p.add_argument("--repeats", type=int, default=3, help="warm passes timed per model")
    p.add_argument("--rows", type=int, default=25, help="rows of each profile table")
    p.add_argument("--models", nargs="*", default=["stage1", "s2a_1layer", "s2a_full"])
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    p.add_argument("--fuse", action="store_true", help="bf16: fused q/k/v and gate/up GEMMs (opt-in; A/B)")
    p.add_argument("--out", type=Path, help="write tables and summary.json here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    f0 = faults()
    eng, models, load_s = load(args.cache, args.dtype, args.attention)
    f1 = faults()
    summary = {
        "dtype": args.dtype,
        "attention": args.attention,
        "fused_projections": args.fuse,
        "frames": args.frames,
        "threads": torch.get_num_threads(),
        "load_s": load_s,
        "load_faults": [f1[0] - f0[0], f1[1] - f0[1]],
        "models": {},
    }
    print(f"loaded in {load_s:.2f}s, threads {torch.get_num_threads()}, faults {summary['load_faults']}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        model = models[name]
        if args.fuse:
            model.diff_estimator.fuse()
        one_pass, one_step, x = make_step(name, model, args.frames)
        fa = faults()
        cold = timed(one_pass, 1)[0]
        fb = faults()
        warm = timed(one_pass, args.repeats)
        fc = faults()
        n_pass = 2 if name == "s2a_full" else 1
        floor = timed(gemm_only(model, x, n_pass), args.repeats)
        table, prof = profile_table(one_step, args.rows)
        rec = {
            "cold_pass_s": cold,
            "cold_faults": [fb[0] - fa[0], fb[1] - fa[1]],
            "warm_pass_s": warm,
            "warm_faults_per_pass": [(fc[0] - fb[0]) / args.repeats, (fc[1] - fb[1]) / args.repeats],
            "warm_median_s": statistics.median(warm),
            "gemm_only_median_s": statistics.median(floor),
            "profile": prof,
        }
        summary["models"][name] = rec
        head = (
            f"== {name} ({args.dtype}, {args.attention}, {args.frames} frames, {n_pass} pass(es) per step)\n"
            f"cold pass {cold:.3f}s ({rec['cold_faults'][0]} minor / {rec['cold_faults'][1]} major faults); "
            f"warm {', '.join(f'{w:.3f}' for w in warm)}s "
            f"({rec['warm_faults_per_pass'][0]:.0f} minor faults per pass); "
            f"GEMM-only {statistics.median(floor):.3f}s\n"
            f"profile of one step: self total {prof['self_total_ms']:.0f} ms, GEMM {prof['gemm_share']:.1%} "
            f"({prof['gemm_calls']} of {prof['op_calls']} op calls; {prof['cast_copy_calls']} casts/copies)\n"
        )
        print(head + table, flush=True)
        if args.out:
            (args.out / f"{name}.txt").write_text(head + table + "\n")
    if args.out:
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

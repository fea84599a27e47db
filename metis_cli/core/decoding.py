"""Masked-generative decoding loops of stage 1 (spec §6.4) and S2A (spec §7.3).

Two sets of loops, side by side:

* the **reference loops** `stage1_reference` and `s2a_reference`: one item, written out step by
  step (a comment per step, shapes in comments). They are the official loops: float32, separate
  conditional / unconditional passes, one unpadded sequence per forward.
* the **batched loops** `stage1_generate` and `s2a_generate` (what the engine calls): B items in
  padded batches. At B = 1 they perform exactly the reference's operations (tested bit for bit);
  for B > 1 every item stays independent of the others: each item's valid positions are
  0..N_i-1 ([phones ; prompt ; target], or [target] for the unconditional branch) with padding
  after them masked as keys; CFG std, re-mask counts, early stops and noise draws are per item,
  from the item's own `NoiseSource` with its own unpadded shapes (tokens equal the item's
  reference run in fp32; floats may differ in the last bits through the padding).

Randomness goes through `NoiseSource.uniform(shape, kind, device)`; per step an item draws
one "sample" tensor (1, L, V) (not on a greedy last step) and then one "choice" tensor (1, L).

Opt-in fast paths (`DecodeOptions`): `fused_cfg` (both CFG passes in one padded forward),
`static_shapes` (every forward of a loop has the same batch and length: finished items stay in
the batch as padding, and the re-mask selection is a fixed-shape rank mask instead of
`topk(n)` with an n that changes every step; tokens equal the default loop's, tested on the
tiny models and the golden noise) and `cuda_graphs` (the backbone forward compiled with
`torch.compile(mode="reduce-overhead")`, i.e. CUDA graphs; only on CUDA devices, a no-op
elsewhere; meant for use with `static_shapes`).

Non-finite logits (an fp16 overflow, a broken checkpoint) raise `NonFiniteError` naming the
stage, the step and the item. The check costs one host sync per loop (after its last step),
none per step.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch
from torch import Tensor

from metis_cli.constants import GUMBEL_EPS, MIN_TEMPERATURE, SINGLE_STEP_TEMPERATURE
from metis_cli.errors import InputError, NonFiniteError

log = logging.getLogger(__name__)

NoiseKind = Literal["sample", "choice"]


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class DecodeOptions:
    # number of decoding steps: an int for stage 1, one int per codebook for S2A
    steps: int | tuple[int, ...]
    # classifier-free guidance weight w (0 disables the unconditional pass)
    cfg: float = 0.0
    # std-rescale mix r of the guided output (spec §6.4 step 3)
    rescale_cfg: float = 0.75
    # start temperature of the Gumbel sampler, annealed linearly with t
    temperature: float = 0.9
    # top-k filter: keep ceil((1 - filter_thres) * V) logits per position
    filter_thres: float = 0.98
    # fast mode: conditional and unconditional passes in one padded forward
    fused_cfg: bool = False
    # fast mode: fixed forward shapes per loop (finished items ride along as padding) and a
    # fixed-shape re-mask selection; tokens equal the default loop's (see the module docstring)
    static_shapes: bool = False
    # fast mode, CUDA only: backbone forward through torch.compile(mode="reduce-overhead")
    # (CUDA graphs); ignored on other devices
    cuda_graphs: bool = False


# the card's decoding keys (spec §1.5) -> `Decoding` fields: top level, then the "s2a" block
_CARD_KEYS = ("steps", "cfg", "rescale_cfg", "temperature", "filter_thres")
_CARD_S2A_KEYS = (
    "steps_1layer",
    "steps_full",
    "cfg_1layer",
    "cfg_full",
    "temperature",
    "filter_thres",
    "rescale_cfg",
)


@dataclass(frozen=True)
class Decoding:
    """The resolved decoding settings of a run (spec §1.5): the one type the engine passes down.

    Defaults are written here only; `from_card` takes what a model card sets (card values win
    over these defaults, user overrides over both). `stage1()` and `s2a(full)` give the options
    of one decoding loop; the fast modes are engine options, passed to them.
    """

    steps: int  # stage-1 decoding steps
    cfg: float  # stage-1 classifier-free guidance scale (0 = off)
    rescale_cfg: float = 0.75  # std rescale factor of the guided logits
    temperature: float = 0.9  # stage-1 start temperature (annealed by t)
    filter_thres: float = 0.98  # top-k keeps ceil((1 - thres) * V) logits
    s2a_steps_1layer: tuple[int, ...] = (40,)  # steps of the 1-codebook S2A model
    s2a_steps_full: tuple[int, ...] = (40, 16, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)  # per codebook
    s2a_cfg_1layer: float = 0.0
    s2a_cfg_full: float = 2.5
    s2a_temperature: float = 1.5
    s2a_filter_thres: float = 0.98
    s2a_rescale_cfg: float = 0.75

    @classmethod
    def from_card(cls, card, task: str, **overrides) -> Decoding:  # noqa: ANN001
        """The card's settings for `task` over the defaults, then the non-None `overrides`."""
        d = card.decoding_for(task)
        if not d:
            raise InputError(f"model '{card.name}' has no decoding settings for task '{task}'")
        values = {k: d[k] for k in _CARD_KEYS if k in d}
        s2a = d.get("s2a", {})
        values.update({f"s2a_{k}": s2a[k] for k in _CARD_S2A_KEYS if k in s2a})
        for k in ("s2a_steps_1layer", "s2a_steps_full"):
            if k in values:
                values[k] = tuple(values[k])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def stage1(
        self, fused_cfg: bool = False, static_shapes: bool = False, cuda_graphs: bool = False
    ) -> DecodeOptions:
        """The options of the stage-1 loop (`DecodeOptions`), with the engine's fast modes."""
        return DecodeOptions(
            self.steps, self.cfg, self.rescale_cfg, self.temperature, self.filter_thres,
            fused_cfg, static_shapes, cuda_graphs,
        )  # fmt: skip

    def s2a(
        self, full: bool, fused_cfg: bool = False, static_shapes: bool = False, cuda_graphs: bool = False
    ):
        """The options of the 1-layer (`full=False`) or full S2A loop, with the fast modes."""
        steps = self.s2a_steps_full if full else self.s2a_steps_1layer
        return DecodeOptions(
            tuple(steps), self.s2a_cfg_full if full else self.s2a_cfg_1layer, self.s2a_rescale_cfg,
            self.s2a_temperature, self.s2a_filter_thres, fused_cfg, static_shapes, cuda_graphs,
        )  # fmt: skip


# the official S2A settings (spec §1.5; the stage-1 fields are not read by `s2a`)
OFFICIAL_S2A = Decoding(steps=1, cfg=0.0)


# ----------------------------------------------------------------------------- noise


class NoiseSource(Protocol):
    def uniform(self, shape: tuple[int, ...], kind: NoiseKind, device: torch.device | None = None) -> Tensor:
        """float32 uniforms in [0, 1) of `shape`."""
        ...


class TorchNoise:
    """Draws from a torch.Generator on the generator's device (like the official
    `zeros_like(t).uniform_(0, 1)` on the global generator); `None` uses the global one."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator
        self.draws = 0

    def uniform(self, shape: tuple[int, ...], kind: NoiseKind, device: torch.device | None = None) -> Tensor:
        gen = self.generator
        dev = gen.device if gen is not None else (device or torch.device("cpu"))
        self.draws += 1
        u = torch.empty(shape, dtype=torch.float32, device=dev).uniform_(0, 1, generator=gen)
        return u if device is None else u.to(device)


class ReplayNoise:
    """Replays a recorded uniform stream; checks each draw's shape and kind."""

    def __init__(self, tensors: Sequence[Tensor], kinds: Sequence[str]):
        if len(tensors) != len(kinds):
            raise ValueError(f"{len(tensors)} noise tensors but {len(kinds)} kinds")
        self.tensors = list(tensors)
        self.kinds = list(kinds)
        self.pos = 0

    @classmethod
    def from_file(cls, path: str | Path) -> ReplayNoise:
        """A golden `noise_<run>.safetensors` file (u0000, u0001, ...; metadata `kinds`)."""
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            kinds = (f.metadata() or {}).get("kinds", "")
            keys = sorted(f.keys())
            tensors = [f.get_tensor(k) for k in keys]
        return cls(tensors, kinds.split(",") if kinds else [])

    @property
    def consumed(self) -> bool:
        return self.pos == len(self.tensors)

    @property
    def remaining(self) -> int:
        return len(self.tensors) - self.pos

    def uniform(self, shape: tuple[int, ...], kind: NoiseKind, device: torch.device | None = None) -> Tensor:
        if self.pos >= len(self.tensors):
            raise ValueError(f"noise replay exhausted: draw {self.pos} ({kind} {list(shape)}) requested")
        u, k = self.tensors[self.pos], self.kinds[self.pos]
        if k != kind or tuple(u.shape) != tuple(shape):
            raise ValueError(
                f"noise replay mismatch at draw {self.pos}: recorded {k} {list(u.shape)}, "
                f"requested {kind} {list(shape)}"
            )
        self.pos += 1
        return u.float() if device is None else u.float().to(device)


def gumbel(u: Tensor) -> Tensor:
    """Gumbel noise from uniforms, float32: -log(-log(u + 1e-10) + 1e-10)."""
    u = u.float()
    return -torch.log(-torch.log(u + GUMBEL_EPS) + GUMBEL_EPS)


# ----------------------------------------------------------------------------- sampler pieces


def top_k_count(vocab: int, filter_thres: float) -> int:
    """k = ceil((1 - filter_thres) * V) in Python floats (0.98 -> 3 for V=100), in [1, V]."""
    return min(max(math.ceil((1 - filter_thres) * vocab), 1), vocab)


def top_k_filter(logits: Tensor, filter_thres: float) -> Tensor:
    """Keep the k largest logits on the last axis, -inf elsewhere."""
    k = top_k_count(logits.shape[-1], filter_thres)
    val, ind = logits.topk(k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter_(-1, ind, val)


def time_grid(steps: int) -> list[float]:
    """[1 - i/N for i < N] + [0.0] in Python doubles (1.0 - i*h, h = 1.0/N)."""
    h = 1.0 / steps
    return [1.0 - i * h for i in range(steps)] + [0.0]


def next_mask_count(t_next: float, length: int) -> int:
    """int(sin(t * pi / 2) * L) evaluated in float32 in the official op order."""
    t = torch.full((1,), t_next, dtype=torch.float32)
    return int((torch.sin(t * math.pi / 2) * length).long()[0].item())


def remask_topk(scores: Tensor, n: int) -> Tensor:
    """(1, L) bool mask of the n highest scores (the official `topk(n)` selection)."""
    idx = scores.topk(n, dim=-1).indices
    return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter(1, idx, True)


def remask_static(scores: Tensor, n: int | Tensor) -> Tensor:
    """The same set as `remask_topk` (barring exactly tied scores) with shapes fixed for every n:
    the rank of each score in a stable descending sort, kept where rank < n."""
    order = scores.argsort(dim=-1, descending=True, stable=True)  # (B, L)
    pos = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, pos)  # rank[b, order[b, j]] = j
    return rank < n


def cfg_combine(g_c: Tensor, g_u: Tensor, cfg: float, rescale_cfg: float) -> Tensor:
    """CFG with std rescale over all elements of g_c (one item), computed in float32."""
    dtype = g_c.dtype
    g_c, g_u = g_c.float(), g_u.float()
    pos_std = g_c.std()
    g = g_c + cfg * (g_c - g_u)
    rescaled = g * pos_std / g.std()
    g = rescale_cfg * rescaled + (1 - rescale_cfg) * g
    return g.to(dtype)


@dataclass
class _Slot:
    """Decoding state of one item for one loop (stage 1 or one S2A layer)."""

    length: int
    noise: NoiseSource
    mask: Tensor | None = None  # (1, L) bool, True = still masked
    seq: Tensor | None = None  # (1, L) int64
    done: bool = False
    finite: list[Tensor] | None = None  # per sampled step: 0-dim bool, all logits finite


def _sample_step(slot: _Slot, logits: Tensor, i: int, t_list: list[float], opts: DecodeOptions) -> None:
    """Steps 5-11 of spec §6.4 for one item; logits (1, L, V) float32."""
    steps = len(t_list) - 1
    t_i = t_list[i]
    logits = top_k_filter(logits, opts.filter_thres)
    if i == steps - 1 and steps > 1:
        ids = logits.argmax(dim=-1)  # greedy last step, no noise
    else:
        temp = SINGLE_STEP_TEMPERATURE if steps == 1 else max(opts.temperature * t_i, MIN_TEMPERATURE)
        u = slot.noise.uniform(tuple(logits.shape), "sample", logits.device)
        ids = (logits / max(temp, 1e-10) + gumbel(u)).argmax(dim=-1)  # (1, L)
    mask = slot.mask
    seq = torch.where(mask, ids, slot.seq)
    p = logits.softmax(dim=-1).gather(-1, ids[..., None])[..., 0]  # (1, L)
    u = slot.noise.uniform(tuple(p.shape), "choice", p.device)
    scores = 1 - (t_i * gumbel(u) + p)
    n = next_mask_count(t_list[i + 1], slot.length)
    if n == 0:
        slot.seq, slot.done = seq, True
        return
    scores = scores.masked_fill(~mask, -torch.finfo(scores.dtype).max)
    slot.mask = remask_static(scores, n) if opts.static_shapes else remask_topk(scores, n)
    slot.seq = seq.masked_fill(slot.mask, 0)


def backbone_forward(net, opts: DecodeOptions, device: torch.device) -> Callable:
    """`net.run`, or with `opts.cuda_graphs` on a CUDA device its torch.compile'd form
    (mode "reduce-overhead": CUDA graphs, one per input shape; cached on the module).
    On any other device this is `net.run` itself: the flag is a no-op there."""
    if not (opts.cuda_graphs and device.type == "cuda"):
        return net.run
    owner, fn = net.__dict__.get("_metis_compiled_run", (None, None))
    if owner is None or owner() is not net:  # none yet, or copied along by a deepcopy of another net
        fn = torch.compile(net.run, mode="reduce-overhead", dynamic=False)
        net.__dict__["_metis_compiled_run"] = (weakref.ref(net), fn)
    return fn


def _run_padded(net, seqs: list[Tensor], t: float, run: Callable | None = None) -> list[Tensor]:
    """One backbone pass (`net.run`, or `run`) over sequences (1, N_b, H) -> list of (1, N_b, H).

    A single sequence runs unpadded (reference mode); several are right-padded and the
    padding is masked as keys.
    """
    run = net.run if run is None else run
    dev = seqs[0].device
    tt = torch.full((len(seqs),), t, dtype=torch.float32, device=dev)
    if len(seqs) == 1:
        return [run(seqs[0], tt)]
    lens = [s.shape[1] for s in seqs]
    n = max(lens)
    h = seqs[0].new_zeros(len(seqs), n, seqs[0].shape[2])
    keep = torch.zeros(len(seqs), n, device=dev)
    for b, s in enumerate(seqs):
        h[b, : lens[b]] = s[0]
        keep[b, : lens[b]] = 1
    out = run(h, tt, None if min(lens) == n else keep)
    return [out[b : b + 1, : lens[b]] for b in range(len(seqs))]


# (active indices, current inputs (1, L_b, H), t) -> (cond outputs, uncond outputs or None), each (1, L_b, H)
PassFn = Callable[[list[int], list[Tensor], float], tuple[list[Tensor], list[Tensor] | None]]


def _decode(
    slots: list[_Slot],
    steps: int,
    opts: DecodeOptions,
    embed: Callable[[int, _Slot], Tensor],
    passes: PassFn,
    head: Callable[[Tensor], Tensor],
    stage: str = "decoding",
) -> None:
    """The masked decoding loop shared by stage 1 and every S2A layer; fills slot.seq.

    Default: the forward runs the unfinished items only. `opts.static_shapes`: every item in
    every forward (finished ones as padding: computed, not sampled, no noise drawn).
    """
    if steps < 1:
        raise InputError(f"decoding needs at least one step, got {steps}")
    t_list = time_grid(steps)
    for s in slots:
        s.done = False
        s.finite = []
    for i in range(steps):
        active = [b for b, s in enumerate(slots) if not s.done]
        if not active:
            break
        rows = list(range(len(slots))) if opts.static_shapes else active
        curs = [embed(b, slots[b]) for b in rows]
        g_c, g_u = passes(rows, curs, t_list[i])
        for k, b in enumerate(rows):
            if slots[b].done:
                continue
            g = g_c[k] if g_u is None else cfg_combine(g_c[k], g_u[k], opts.cfg, opts.rescale_cfg)
            logits = head(g).float()  # (1, L, V)
            slots[b].finite.append(torch.isfinite(logits).all())  # stays on the device
            _sample_step(slots[b], logits, i, t_list, opts)
    check_finite(slots, stage)


def check_finite(slots: list[_Slot], stage: str) -> None:
    """Raise NonFiniteError for the first item and step whose logits were not all finite
    (one host sync for the whole loop)."""
    flags = [(b, torch.stack(s.finite)) for b, s in enumerate(slots) if s.finite]
    if not flags or flags[0][1].is_meta:  # meta-device runs (the tests' host-sync detector) have no values
        return
    ok = torch.cat([f for _, f in flags]).cpu()
    if bool(ok.all()):
        return
    at = 0
    for b, f in flags:
        bad = (~ok[at : at + f.numel()]).nonzero()
        if bad.numel():
            raise NonFiniteError(
                f"{stage}: non-finite logits (inf/NaN) at step {int(bad[0, 0]) + 1}, batch item {b} "
                "(fp16 overflow or a broken checkpoint; try --dtype bfloat16 or float32)"
            )
        at += f.numel()


def _split_passes(net, cond_seqs, cond_offs, uncond_seqs, lens, t, fused, run=None):
    """Run conditional (and unconditional) passes; slice each item's target part."""
    if uncond_seqs is not None and fused:
        outs = _run_padded(net, cond_seqs + uncond_seqs, t, run)
        oc, ou = outs[: len(cond_seqs)], outs[len(cond_seqs) :]
    else:
        oc = _run_padded(net, cond_seqs, t, run)
        ou = None if uncond_seqs is None else _run_padded(net, uncond_seqs, t, run)
    g_c = [o[:, off : off + n] for o, off, n in zip(oc, cond_offs, lens, strict=True)]
    return g_c, ou


# ----------------------------------------------------------------------------- reference loops
#
# One item, batch size 1, written out. The batched loops below perform the same operations
# (tests/core/test_decoding.py checks the two against each other bit for bit at B = 1).


@torch.no_grad()
def stage1_reference(
    model,
    prompt: Tensor,
    target_len: int,
    phones: Tensor | None,
    finetune_cond: Tensor | None,
    opts: DecodeOptions,
    noise: NoiseSource,
) -> Tensor:
    """Stage-1 reverse diffusion (spec §6.4) of one item -> generated codes (L,) int64.

    prompt (Lp,) semantic prompt codes; target_len L; phones (P,) or None; finetune_cond
    (Lp + L, cond_dim) or None (the adapter input).
    """
    steps = opts.steps if isinstance(opts.steps, int) else _single(opts.steps)
    dev, dt = model.cond_emb.weight.device, model.dtype
    net = model.diff_estimator
    L, Lp = target_len, prompt.shape[0]
    # fixed across steps: the prompt embedding, the phone prefix, the adapter output
    prompt_emb = model.cond_emb(prompt.to(dev).long()[None])  # (1, Lp, H)
    prefix = None
    if phones is not None and model.has_phones:
        prefix = net.cond_mlp(model.phone_emb(phones.to(dev).long()[None]))  # (1, P, H)
    adapted = None if finetune_cond is None else model.adapt(finetune_cond.to(dev)[None])  # (1, Lp + L, H)
    mask_tok = model.mask_token().to(dt)  # (H,)
    # start: every target position masked
    seq = torch.zeros(1, L, dtype=torch.long, device=dev)  # (1, L)
    mask = torch.ones(1, L, dtype=torch.bool, device=dev)  # (1, L), True = masked
    t_list = time_grid(steps)  # 1, 1 - 1/N, ..., 1/N, 0
    for i in range(steps):
        t = t_list[i]
        tt = torch.full((1,), t, dtype=torch.float32, device=dev)  # (1,)
        # 1. the current target: [MASK] where masked, the token's embedding elsewhere
        cur = torch.where(mask[..., None], mask_tok, model.cond_emb(seq))  # (1, L, H)
        # 2. conditional pass over [prefix ; prompt ; target] (+ adapter), keep the target part
        x = torch.cat([prompt_emb, cur], dim=1)  # (1, Lp + L, H)
        if adapted is not None:
            x = x + adapted
        off = Lp
        if prefix is not None:
            x = torch.cat([prefix, x], dim=1)  # (1, P + Lp + L, H)
            off += prefix.shape[1]
        g = net.run(x, tt)[:, off : off + L]  # (1, L, H)
        # 3. classifier-free guidance: unconditional pass over the target alone, std-rescaled mix
        if opts.cfg > 0:
            g_u = net.run(cur if adapted is None else cur + adapted[:, Lp:], tt)  # (1, L, H)
            g = cfg_combine(g, g_u, opts.cfg, opts.rescale_cfg)
        logits = model.to_logit(g).float()  # (1, L, V)
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteError(f"stage 1: non-finite logits (inf/NaN) at step {i + 1}, batch item 0")
        # 4-11. sample, then choose which positions stay masked
        seq, mask = _reference_step(logits, seq, mask, i, t_list, opts, noise)
        if mask is None:
            break
    return seq[0]


@torch.no_grad()
def s2a_reference(
    model,
    semantic: Tensor,
    prompt: Tensor,
    opts: DecodeOptions,
    noise: NoiseSource,
    gt: Tensor | None = None,
) -> Tensor:
    """S2A reverse diffusion (spec §7.3) of one item -> codes (L, Q) int64.

    semantic (T,) = [prompt ; target] semantic codes; prompt (Lp, >=Q) acoustic prompt codes;
    gt (L, g) given codes of the first g codebooks (the full model after the 1-layer one).
    opts.steps: one step count per codebook.
    """
    Q = model.num_quantizer
    steps = (opts.steps,) * Q if isinstance(opts.steps, int) and Q == 1 else tuple(opts.steps)
    dev, dt = model.cond_emb.weight.device, model.dtype
    net = model.diff_estimator
    Lp = prompt.shape[0]
    L = semantic.shape[0] - Lp
    cond = model.cond_emb(semantic.to(dev).long()[None])  # (1, T, H), T = Lp + L
    prompt_emb = model.embed_codes(prompt.to(dev).long()[None, :, :Q])  # (1, Lp, H), all codebooks
    mask_tok = model.mask_token().to(dt)  # (H,)
    out = torch.zeros(1, L, Q, dtype=torch.long, device=dev)  # (1, L, Q)
    cum = torch.zeros(1, L, model.cfg.hidden_size, dtype=dt, device=dev)  # embeddings of done codebooks
    start = 0
    if gt is not None:
        start = gt.shape[-1]
        out[..., :start] = gt.to(dev).long()[None]
        cum = cum + model.embed_codes(gt.to(dev).long()[None])  # (1, L, H)
    for layer in range(start, Q):  # codebook by codebook, coarse to fine
        emb, head = model.token_emb[layer], model.to_logits[layer]
        # the condition (semantic codes + layer index) through cond_mlp, fixed for the layer
        cond_l = cond + model.layer_emb.weight[layer]  # (1, T, H)
        cond_h = net.cond_mlp(cond_l)  # (1, T, H)
        uncond_h = net.cond_mlp(cond_l[:, Lp:]) if opts.cfg > 0 else None  # (1, L, H), target only
        higher = mask_tok * (Q - 1 - layer)  # one [MASK] per codebook not predicted yet
        seq = torch.zeros(1, L, dtype=torch.long, device=dev)  # (1, L)
        mask = torch.ones(1, L, dtype=torch.bool, device=dev)  # (1, L), True = masked
        t_list = time_grid(steps[layer])
        for i in range(steps[layer]):
            t = t_list[i]
            tt = torch.full((1,), t, dtype=torch.float32, device=dev)  # (1,)
            # 1. current target: codebooks below + this one ([MASK] where masked) + masks above
            cur = cum + torch.where(mask[..., None], mask_tok, emb(seq)) + higher  # (1, L, H)
            # 2. conditional pass over [prompt ; target] + condition, keep the target part
            x = torch.cat([prompt_emb, cur], dim=1) + cond_h  # (1, T, H)
            g = net.run(x, tt)[:, Lp : Lp + L]  # (1, L, H)
            # 3. classifier-free guidance: the target with its condition only
            if uncond_h is not None:
                g = cfg_combine(g, net.run(cur + uncond_h, tt), opts.cfg, opts.rescale_cfg)
            logits = head(g).float()  # (1, L, V)
            if not bool(torch.isfinite(logits).all()):
                raise NonFiniteError(
                    f"S2A ({'1-layer' if Q == 1 else 'full'} model) codebook {layer}: "
                    f"non-finite logits (inf/NaN) at step {i + 1}, batch item 0"
                )
            # 4-11. sample, then choose which positions stay masked
            seq, mask = _reference_step(logits, seq, mask, i, t_list, opts, noise)
            if mask is None:
                break
        cum = cum + emb(seq)  # this codebook is decided: part of every later input
        out[..., layer] = seq
    return out[0]


def _reference_step(logits, seq, mask, i, t_list, opts, noise) -> tuple[Tensor, Tensor | None]:
    """Steps 4-11 of spec §6.4 for one item: (seq, mask) after step i; mask None = finished."""
    steps, t = len(t_list) - 1, t_list[i]
    # 4. top-k filter: the k = ceil(0.02 V) largest logits per position survive
    logits = top_k_filter(logits, opts.filter_thres)  # (1, L, V), -inf elsewhere
    # 5. tokens: greedy on the last of several steps, else Gumbel-max at an annealed temperature
    if i == steps - 1 and steps > 1:
        ids = logits.argmax(dim=-1)  # (1, L)
    else:
        temp = SINGLE_STEP_TEMPERATURE if steps == 1 else max(opts.temperature * t, MIN_TEMPERATURE)
        u = noise.uniform(tuple(logits.shape), "sample", logits.device)  # (1, L, V)
        ids = (logits / max(temp, 1e-10) + gumbel(u)).argmax(dim=-1)  # (1, L)
    # 6. only masked positions take the new tokens
    seq = torch.where(mask, ids, seq)  # (1, L)
    # 7. confidence: the chosen token's probability plus t-scaled Gumbel noise
    p = logits.softmax(dim=-1).gather(-1, ids[..., None])[..., 0]  # (1, L)
    u = noise.uniform(tuple(p.shape), "choice", p.device)  # (1, L)
    scores = 1 - (t * gumbel(u) + p)  # high score = low confidence
    # 8. how many positions stay masked after this step: int(sin(t_next * pi / 2) * L)
    n = next_mask_count(t_list[i + 1], seq.shape[1])
    if n == 0:  # 9. nothing left to re-mask: finished (possibly before the last step)
        return seq, None
    # 10. re-mask the n least confident of the positions decided in this step
    scores = scores.masked_fill(~mask, -torch.finfo(scores.dtype).max)  # kept tokens stay kept
    mask = remask_topk(scores, n)  # (1, L)
    # 11. masked positions are reset to token 0
    return seq.masked_fill(mask, 0), mask


# ----------------------------------------------------------------------------- stage 1


@torch.no_grad()
def stage1_generate(
    model,
    prompts: list[Tensor],
    target_lens: list[int],
    phones: list[Tensor] | None,
    finetune_cond: list[Tensor] | None,
    opts: DecodeOptions,
    noise: list[NoiseSource],
) -> list[Tensor]:
    """Stage-1 reverse diffusion (spec §6.4) for a batch of unpadded items.

    prompts[i] (Lp_i,) int64 semantic prompt codes (may be empty); target_lens[i] = L_i;
    phones[i] (P_i,) phone ids (ignored when the model has no phone embedding);
    finetune_cond[i] (Lp_i + L_i, cond_dim) features for the adapter; noise[i] per item.
    Returns the generated codes (L_i,) int64 per item (prompt not included).
    """
    B = len(prompts)
    steps = opts.steps if isinstance(opts.steps, int) else _single(opts.steps)
    if not (len(target_lens) == len(noise) == B) or B == 0:
        raise InputError(
            f"stage 1: {B} prompts, {len(target_lens)} target lengths, {len(noise)} noise sources"
        )
    for name, lst in (("phones", phones), ("finetune_cond", finetune_cond)):
        if lst is not None and len(lst) != B:
            raise InputError(f"stage 1: {len(lst)} {name} for {B} items")
    if any(n < 1 for n in target_lens):
        raise InputError(f"stage 1: target lengths must be positive, got {list(target_lens)}")
    if finetune_cond is not None and not model.has_adapter:
        raise InputError("stage 1: a finetune condition was given but the model has no adapter")
    dev, dt = model.cond_emb.weight.device, model.dtype
    net = model.diff_estimator
    run = backbone_forward(net, opts, dev)

    prompt_emb = [model.cond_emb(p.to(dev).long()[None]) for p in prompts]  # (1, Lp, H)
    lp = [p.shape[0] for p in prompts]
    prefix = [None] * B  # cond_mlp(phone_emb(ph)) (1, P, H)
    if phones is not None and model.has_phones:
        prefix = [net.cond_mlp(model.phone_emb(ph.to(dev).long()[None])) for ph in phones]
    adapted = [None] * B  # (1, Lp + L, H)
    if finetune_cond is not None:
        for b, f in enumerate(finetune_cond):
            if f.shape[0] != lp[b] + target_lens[b]:
                raise InputError(
                    f"stage 1: item {b}: finetune condition has {f.shape[0]} frames, "
                    f"expected prompt {lp[b]} + target {target_lens[b]}"
                )
            adapted[b] = model.adapt(f.to(dev)[None])
    mask_tok = model.mask_token()  # (H,)

    slots = [_Slot(L, nz) for L, nz in zip(target_lens, noise, strict=True)]
    for s in slots:
        s.mask = torch.ones(1, s.length, dtype=torch.bool, device=dev)
        s.seq = torch.zeros(1, s.length, dtype=torch.long, device=dev)

    def embed(b: int, s: _Slot) -> Tensor:
        return torch.where(s.mask[..., None], mask_tok.to(dt), model.cond_emb(s.seq))  # (1, L, H)

    def passes(active: list[int], curs: list[Tensor], t: float):
        cond_seqs, offs, lens, uncond = [], [], [], []
        for b, cur in zip(active, curs, strict=True):
            x = torch.cat([prompt_emb[b], cur], dim=1)  # (1, Lp + L, H)
            if adapted[b] is not None:
                x = x + adapted[b]
            off = lp[b]
            if prefix[b] is not None:
                x = torch.cat([prefix[b], x], dim=1)
                off += prefix[b].shape[1]
            cond_seqs.append(x)
            offs.append(off)
            lens.append(cur.shape[1])
            if opts.cfg > 0:
                uncond.append(cur if adapted[b] is None else cur + adapted[b][:, lp[b] :])
        return _split_passes(
            net, cond_seqs, offs, uncond if opts.cfg > 0 else None, lens, t, opts.fused_cfg, run
        )

    _decode(slots, steps, opts, embed, passes, model.to_logit, "stage 1")
    return [s.seq[0] for s in slots]


def _single(steps: Sequence[int]) -> int:
    if len(steps) != 1:
        raise InputError(f"stage 1 takes one step count, got {list(steps)}")
    return int(steps[0])


# ----------------------------------------------------------------------------- S2A


def _s2a_lengths(
    semantic: list[Tensor], prompts: list[Tensor], noise: list, gt: list[Tensor] | None, n_steps: int, Q: int
) -> tuple[list[int], list[int]]:
    """(prompt lengths Lp_i, target lengths L_i) of an S2A batch; InputError on a shape mismatch."""
    B = len(semantic)
    if n_steps != Q:
        raise InputError(f"S2A: {n_steps} step counts for {Q} codebooks")
    if not (len(prompts) == len(noise) == B) or B == 0 or (gt is not None and len(gt) != B):
        raise InputError(f"S2A: {B} semantic sequences, {len(prompts)} prompts, {len(noise)} noise sources")
    lp = [p.shape[0] for p in prompts]
    lens = [s.shape[0] - n for s, n in zip(semantic, lp, strict=True)]
    if any(n < 1 for n in lens):
        raise InputError(f"S2A: semantic lengths {[s.shape[0] for s in semantic]} do not exceed prompts {lp}")
    for b, p in enumerate(prompts):
        if p.ndim != 2 or p.shape[1] < Q:
            raise InputError(f"S2A: item {b}: prompt codes {list(p.shape)} need (Lp, >={Q})")
    return lp, lens


def _s2a_known_layers(model, gt: list[Tensor], lens: list[int], out: list[Tensor], cum: list[Tensor]) -> int:
    """Copy the given codes of the first g layers into `out` and add their embeddings to `cum`
    (both per item, in place); returns g."""
    start = gt[0].shape[-1]
    for b, g in enumerate(gt):
        if g.shape != (lens[b], start):
            raise InputError(f"S2A: item {b}: gt codes {list(g.shape)}, expected [{lens[b]}, {start}]")
        g = g.to(out[b].device).long()[None]
        out[b][..., :start] = g
        cum[b] = cum[b] + model.embed_codes(g)
    return start


@torch.no_grad()
def s2a_generate(
    model,
    semantic: list[Tensor],
    prompts: list[Tensor],
    opts: DecodeOptions,
    noise: list[NoiseSource],
    gt: list[Tensor] | None = None,
) -> list[Tensor]:
    """S2A reverse diffusion (spec §7.3) for a batch of unpadded items.

    semantic[i] (T_i,) int64 = [prompt ; generated] semantic codes; prompts[i] (Lp_i, >=Q)
    acoustic prompt codes (may have 0 rows); gt[i] (L_i, g) codes of the first g layers.
    opts.steps: one step count per codebook. Returns codes (L_i, Q) with L_i = T_i - Lp_i.
    """
    Q = model.num_quantizer
    steps = (opts.steps,) * Q if isinstance(opts.steps, int) and Q == 1 else tuple(opts.steps)
    lp, lens = _s2a_lengths(semantic, prompts, noise, gt, len(steps), Q)
    dev, dt = model.cond_emb.weight.device, model.dtype
    net = model.diff_estimator
    run = backbone_forward(net, opts, dev)
    cond = [model.cond_emb(s.to(dev).long()[None]) for s in semantic]  # (1, T, H)
    prompt_emb = [model.embed_codes(p.to(dev).long()[None, :, :Q]) for p in prompts]  # (1, Lp, H)
    out = [torch.zeros(1, n, Q, dtype=torch.long, device=dev) for n in lens]
    cum = [torch.zeros(1, n, model.cfg.hidden_size, dtype=dt, device=dev) for n in lens]
    start = 0 if gt is None else _s2a_known_layers(model, gt, lens, out, cum)
    mask_tok = model.mask_token().to(dt)  # (H,)

    for layer in range(start, Q):
        cond_l = [c + model.layer_emb.weight[layer] for c in cond]  # (1, T, H)
        emb, head = model.token_emb[layer], model.to_logits[layer]
        higher = mask_tok * (Q - 1 - layer)  # one mask embedding per unpredicted higher layer
        slots = [_Slot(n, nz) for n, nz in zip(lens, noise, strict=True)]
        for s in slots:
            s.mask = torch.ones(1, s.length, dtype=torch.bool, device=dev)
            s.seq = torch.zeros(1, s.length, dtype=torch.long, device=dev)

        def embed(b: int, s: _Slot, emb=emb, higher=higher) -> Tensor:
            return cum[b] + torch.where(s.mask[..., None], mask_tok, emb(s.seq)) + higher

        # the condition MLP outputs do not change across the layer's steps: computed once
        # (the same calls on the same inputs as per step, so the numbers are identical)
        cond_h = [net.cond_mlp(c) for c in cond_l]  # (1, T, H)
        uncond_h = [net.cond_mlp(c[:, n:]) for c, n in zip(cond_l, lp, strict=True)] if opts.cfg > 0 else None

        def passes(active: list[int], curs: list[Tensor], t: float, cond_h=cond_h, uncond_h=uncond_h):
            cond_seqs, uncond = [], []
            for b, cur in zip(active, curs, strict=True):
                x = torch.cat([prompt_emb[b], cur], dim=1)  # (1, T, H)
                cond_seqs.append(x + cond_h[b])
                if uncond_h is not None:
                    uncond.append(cur + uncond_h[b])
            offs = [lp[b] for b in active]
            n = [lens[b] for b in active]
            return _split_passes(
                net, cond_seqs, offs, uncond if opts.cfg > 0 else None, n, t, opts.fused_cfg, run
            )

        stage = f"S2A ({'1-layer' if Q == 1 else 'full'} model) codebook {layer}"
        _decode(slots, steps[layer], opts, embed, passes, head, stage)
        for b, s in enumerate(slots):
            cum[b] = cum[b] + emb(s.seq)
            out[b][..., layer] = s.seq
    return [o[0] for o in out]


def metis_semantic_to_acoustic(
    s2a_1layer,
    s2a_full,
    semantic: list[Tensor],
    prompts: list[Tensor],
    noise: list[NoiseSource],
    decoding: Decoding = OFFICIAL_S2A,
    *,
    fused_cfg: bool = False,
    static_shapes: bool = False,
    cuda_graphs: bool = False,
) -> list[Tensor]:
    """Metis stage 2 (spec §1.5): 1-layer S2A for codebook 0, then the full S2A for 1..Q-1.

    semantic[i] (T_i,) = [prompt ; generated] semantic codes, prompts[i] (Lp_i, 12) acoustic
    prompt codes; both models draw from noise[i] in order; `decoding`'s s2a_* fields set the
    loops. Returns codes (T_i - Lp_i, 12).
    """
    fast = {"fused_cfg": fused_cfg, "static_shapes": static_shapes, "cuda_graphs": cuda_graphs}
    first = s2a_generate(s2a_1layer, semantic, prompts, decoding.s2a(False, **fast), noise)  # (L, 1)
    return s2a_generate(s2a_full, semantic, prompts, decoding.s2a(True, **fast), noise, gt=first)

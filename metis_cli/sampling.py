"""Masked-generative decoding loops of stage 1 (spec §6.4) and S2A (spec §7.3).

Reference mode (the default) reproduces the official loops bit for bit at batch size 1:
float32, separate conditional / unconditional passes, one unpadded sequence per forward.
Batches (B > 1) keep every item independent of the others: each item's valid positions
are 0..N_i-1 ([phones ; prompt ; target], or [target] for the unconditional branch) with
padding after them masked as keys; CFG std, re-mask counts, early stops and noise draws are
per item, from the item's own `NoiseSource` with its own unpadded shapes.

Randomness goes through `NoiseSource.uniform(shape, kind, device)`; per step an item draws
one "sample" tensor (1, L, V) (not on a greedy last step) and then one "choice" tensor (1, L).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

import torch
from torch import Tensor

from .constants import GUMBEL_EPS, MIN_TEMPERATURE, SINGLE_STEP_TEMPERATURE
from .errors import InputError

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
    idx = scores.topk(n, dim=-1).indices
    slot.mask = torch.zeros_like(mask).scatter(1, idx, True)
    slot.seq = seq.masked_fill(slot.mask, 0)


def _run_padded(net, seqs: list[Tensor], t: float) -> list[Tensor]:
    """One backbone pass (`net.run`) over assembled sequences (1, N_b, H) -> list of (1, N_b, H).

    A single sequence runs unpadded (reference mode); several are right-padded and the
    padding is masked as keys.
    """
    dev = seqs[0].device
    tt = torch.full((len(seqs),), t, dtype=torch.float32, device=dev)
    if len(seqs) == 1:
        return [net.run(seqs[0], tt)]
    lens = [s.shape[1] for s in seqs]
    n = max(lens)
    h = seqs[0].new_zeros(len(seqs), n, seqs[0].shape[2])
    keep = torch.zeros(len(seqs), n, device=dev)
    for b, s in enumerate(seqs):
        h[b, : lens[b]] = s[0]
        keep[b, : lens[b]] = 1
    out = net.run(h, tt, None if min(lens) == n else keep)
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
) -> None:
    """The masked decoding loop shared by stage 1 and every S2A layer; fills slot.seq."""
    if steps < 1:
        raise InputError(f"decoding needs at least one step, got {steps}")
    t_list = time_grid(steps)
    for s in slots:
        s.done = False
    for i in range(steps):
        active = [b for b, s in enumerate(slots) if not s.done]
        if not active:
            break
        curs = [embed(b, slots[b]) for b in active]
        g_c, g_u = passes(active, curs, t_list[i])
        for k, b in enumerate(active):
            g = g_c[k] if g_u is None else cfg_combine(g_c[k], g_u[k], opts.cfg, opts.rescale_cfg)
            logits = head(g).float()  # (1, L, V)
            _sample_step(slots[b], logits, i, t_list, opts)


def _split_passes(net, cond_seqs, cond_offs, uncond_seqs, lens, t, fused):
    """Run conditional (and unconditional) passes; slice each item's target part."""
    if uncond_seqs is not None and fused:
        outs = _run_padded(net, cond_seqs + uncond_seqs, t)
        oc, ou = outs[: len(cond_seqs)], outs[len(cond_seqs) :]
    else:
        oc = _run_padded(net, cond_seqs, t)
        ou = None if uncond_seqs is None else _run_padded(net, uncond_seqs, t)
    g_c = [o[:, off : off + n] for o, off, n in zip(oc, cond_offs, lens, strict=True)]
    return g_c, ou


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
        return _split_passes(net, cond_seqs, offs, uncond if opts.cfg > 0 else None, lens, t, opts.fused_cfg)

    _decode(slots, steps, opts, embed, passes, model.to_logit)
    return [s.seq[0] for s in slots]


def _single(steps: Sequence[int]) -> int:
    if len(steps) != 1:
        raise InputError(f"stage 1 takes one step count, got {list(steps)}")
    return int(steps[0])


# ----------------------------------------------------------------------------- S2A


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
    B = len(semantic)
    Q = model.num_quantizer
    steps = (opts.steps,) * Q if isinstance(opts.steps, int) and Q == 1 else tuple(opts.steps)
    if len(steps) != Q:
        raise InputError(f"S2A: {len(steps)} step counts for {Q} codebooks")
    if not (len(prompts) == len(noise) == B) or B == 0 or (gt is not None and len(gt) != B):
        raise InputError(f"S2A: {B} semantic sequences, {len(prompts)} prompts, {len(noise)} noise sources")
    dev, dt = model.cond_emb.weight.device, model.dtype
    net = model.diff_estimator

    lp = [p.shape[0] for p in prompts]
    lens = [s.shape[0] - n for s, n in zip(semantic, lp, strict=True)]
    if any(n < 1 for n in lens):
        raise InputError(f"S2A: semantic lengths {[s.shape[0] for s in semantic]} do not exceed prompts {lp}")
    for b, p in enumerate(prompts):
        if p.ndim != 2 or p.shape[1] < Q:
            raise InputError(f"S2A: item {b}: prompt codes {list(p.shape)} need (Lp, >={Q})")
    cond = [model.cond_emb(s.to(dev).long()[None]) for s in semantic]  # (1, T, H)
    prompt_emb = [model.embed_codes(p.to(dev).long()[None, :, :Q]) for p in prompts]  # (1, Lp, H)
    out = [torch.zeros(1, n, Q, dtype=torch.long, device=dev) for n in lens]
    start = 0
    cum = [torch.zeros(1, n, model.cfg.hidden_size, dtype=dt, device=dev) for n in lens]
    if gt is not None:
        start = gt[0].shape[-1]
        for b, g in enumerate(gt):
            if g.shape != (lens[b], start):
                raise InputError(f"S2A: item {b}: gt codes {list(g.shape)}, expected [{lens[b]}, {start}]")
            g = g.to(dev).long()[None]
            out[b][..., :start] = g
            cum[b] = cum[b] + model.embed_codes(g)
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
            return _split_passes(net, cond_seqs, offs, uncond if opts.cfg > 0 else None, n, t, opts.fused_cfg)

        _decode(slots, steps[layer], opts, embed, passes, head)
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
    steps_1layer: Sequence[int] = (40,),
    steps_full: Sequence[int] = (40, 16) + (1,) * 10,
    *,
    cfg_1layer: float = 0.0,
    cfg_full: float = 2.5,
    temperature: float = 1.5,
    filter_thres: float = 0.98,
    rescale_cfg: float = 0.75,
    fused_cfg: bool = False,
) -> list[Tensor]:
    """Metis stage 2 (spec §1.5): 1-layer S2A for codebook 0, then the full S2A for 1..Q-1.

    semantic[i] (T_i,) = [prompt ; generated] semantic codes, prompts[i] (Lp_i, 12) acoustic
    prompt codes; both models draw from noise[i] in order. Returns codes (T_i - Lp_i, 12).
    """
    base = DecodeOptions(
        steps=tuple(steps_1layer),
        cfg=cfg_1layer,
        rescale_cfg=rescale_cfg,
        temperature=temperature,
        filter_thres=filter_thres,
        fused_cfg=fused_cfg,
    )
    first = s2a_generate(s2a_1layer, semantic, prompts, base, noise)  # (L, 1)
    full = replace(base, steps=tuple(steps_full), cfg=cfg_full)
    return s2a_generate(s2a_full, semantic, prompts, full, noise, gt=first)

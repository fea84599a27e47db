"""DiffLlama backbones of MaskGCT / Metis (spec §5).

A bidirectional Llama-style transformer whose RMSNorms are modulated by the diffusion time:

    c = diff_step_mlp(sinusoid(t))                          # (B, H)
    h = x + Attn(norm_in(x, c)); y = h + MLP(norm_post(h, c))   per layer
    out = norm(y, c)

Two variants share the blocks:

* `DiffLlamaPrefix` (stage 1): optional phone prefix `cond_mlp(phone_emb)` prepended and
  stripped from the output.
* `DiffLlama` (S2A): additive per-frame condition, input `x + cond_mlp(cond)`.

The fp32 eager path performs the official modules' operations in their order (rsqrt, float32
softmax, rotary halves); on the CPU that made the goldens that is bit for bit, elsewhere GEMM
accumulation order can move the last bits (docs/EXACTNESS.md). Numerically sensitive pieces
(RMSNorm statistics, softmax, rotary and time tables, the key-padding bias) are computed in the
activations' dtype, upcast to float32 only for bf16 / fp16 weights (`numerics.compute_dtype`):
a `.double()` model is a true float64 evaluation. In fp16, eager attention scales q before the
q k^T product so the unscaled scores cannot overflow fp16's range.

`_DiffLlamaBase.fuse()` (opt-in, bf16 / fp16 only) concatenates each layer's q/k/v and gate/up
weights once and runs one GEMM per group (`fuse_linears`; the separate parameters become views of
the concatenation, so the state_dict stays the same). Measured: no faster on the CPU, so off.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metis_cli.constants import MLP_RATIO, RMS_NORM_EPS, ROPE_BASE, TIME_EMBED_MAX_PERIOD
from metis_cli.nn.numerics import REDUCED_PRECISION, compute_dtype

ATTN_IMPLS = ("eager", "sdpa")


def mlp(dim: int, hidden: int, out: int) -> nn.Sequential:
    """Linear -> SiLU -> Linear with biases (keys `.0` and `.2`)."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, out))


def time_sinusoid(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of the raw diffusion time t (B,) in [0, 1] -> (B, dim), [sin ; cos].

    Computed in t's dtype (float32 for a float32 / bf16 / fp16 t, float64 for a float64 t).
    """
    half = dim // 2
    cdt = compute_dtype(t.dtype) if t.is_floating_point() else torch.float32
    scale = math.log(TIME_EMBED_MAX_PERIOD) / (half - 1)
    freqs = torch.exp(torch.arange(half, device=t.device).to(cdt) * -scale)  # (half,)
    ang = t.to(cdt)[:, None] * freqs[None, :] * 1.0  # (B, half)
    return torch.cat((ang.sin(), ang.cos()), dim=-1)


def rotary_tables(
    n: int, head_dim: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """cos, sin tables (n, head_dim) in `dtype` for positions 0..n-1 (halves layout)."""
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, device=device).to(dtype) / head_dim))
    pos = torch.arange(n, device=device).to(dtype)
    ang = pos[:, None] * inv_freq[None, :]  # (n, head_dim/2)
    emb = torch.cat((ang, ang), dim=-1)  # (n, head_dim)
    return emb.cos(), emb.sin()


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def key_padding_bias(keep: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, N) keep-mask (1 = keep) -> additive bias (B, 1, 1, N) in `dtype`: 0 or dtype's min."""
    bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
    bias = bias.masked_fill(keep == 0, torch.finfo(dtype).min)
    return bias[:, None, None, :]


def _plain(linears: tuple[nn.Module, ...]) -> bool:
    """Bias-free `nn.Linear`s only (not e.g. a wrapped, unmerged LoRA linear)."""
    return all(type(lin) is nn.Linear and lin.bias is None for lin in linears)


def fuse_linears(linears: tuple[nn.Linear, ...]) -> Tensor | None:
    """Concatenate bias-free linears' weights (rows) into one tensor, once, and make each
    linear's weight a view of its rows: same values, same state_dict, no second copy (the
    original tensors, e.g. memory-mapped file pages, are released). Returns the concatenation,
    or None (nothing changed) unless every module is a plain bias-free `nn.Linear`."""
    if not _plain(linears):
        return None
    with torch.inference_mode(False), torch.no_grad():
        cat = torch.cat([lin.weight.detach() for lin in linears])  # (sum of out, in)
        start = 0
        for lin in linears:
            n = lin.weight.shape[0]
            lin.weight = nn.Parameter(cat[start : start + n], requires_grad=lin.weight.requires_grad)
            start += n
    return cat


def fused_weight(owner: nn.Module, attr: str, linears: tuple[nn.Linear, ...]) -> Tensor | None:
    """The concatenated weight `owner.<attr>` made by `fuse_linears`, if it is still exactly the
    linears' weights (each one a view of its rows) and no gradient is being recorded; else None
    (the separate linears run: after a reload, `.to()`, or in training)."""
    cat = owner.__dict__.get(attr)
    if cat is None or torch.is_grad_enabled() or torch.compiler.is_compiling() or not _plain(linears):
        return None  # (compiled graphs, e.g. --cuda-graphs, and wrapped linears keep the separate ones)
    ptr, step = cat.data_ptr(), cat.element_size() * cat.shape[1]
    for lin in linears:
        w = lin.weight
        if w.data_ptr() != ptr or w.dtype != cat.dtype or w.device != cat.device:
            return None
        ptr += step * w.shape[0]
    return cat


class AdaptiveRMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * to_weight(c); statistics in x's dtype (float32 for bf16 / fp16)."""

    def __init__(self, dim: int):
        super().__init__()
        self.to_weight = nn.Linear(dim, dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        # x (B, N, H), c (B, H)
        h = x.to(compute_dtype(x.dtype))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + RMS_NORM_EPS)
        w = self.to_weight(c)[:, None, :]  # (B, 1, H)
        return (w * h).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def fuse(self) -> None:
        """Fast modes: one (3H, H) weight for q/k/v (see `fused_weight`)."""
        self._qkv = fuse_linears((self.q_proj, self.k_proj, self.v_proj))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, bias: Tensor | None, impl: str) -> Tensor:
        # x (B, N, H); cos/sin (N, hd) and bias (B, 1, 1, N) or None in compute_dtype(x.dtype)
        B, N, H = x.shape
        qkv = fused_weight(self, "_qkv", (self.q_proj, self.k_proj, self.v_proj))
        if qkv is not None:  # fast modes: one GEMM, q/k/v are views of its output
            qkv = F.linear(x, qkv).view(B, N, 3, self.num_heads, self.head_dim)
            q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # (B, nh, N, hd)
        else:
            q = self.q_proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, N, hd)
            k = self.k_proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if impl == "sdpa":
            mask = None if bias is None else bias.to(q.dtype)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            cdt = compute_dtype(q.dtype)
            if q.dtype == torch.float16:  # scale first: unscaled fp16 scores can overflow
                w = torch.matmul(q * (1.0 / math.sqrt(self.head_dim)), k.transpose(2, 3))
            else:  # the official order: product, then divide
                w = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)  # (B, nh, N, N)
            if bias is not None:
                w = w.to(cdt) + bias
            w = F.softmax(w, dim=-1, dtype=cdt).to(q.dtype)
            y = torch.matmul(w, v)  # (B, nh, N, hd)
        y = y.transpose(1, 2).contiguous().reshape(B, N, H)
        return self.o_proj(y)


class GatedMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def fuse(self) -> None:
        """Fast modes: one (2 * hidden, H) weight for gate/up (see `fused_weight`)."""
        self._gate_up = fuse_linears((self.gate_proj, self.up_proj))

    def forward(self, x: Tensor) -> Tensor:
        gate_up = fused_weight(self, "_gate_up", (self.gate_proj, self.up_proj))
        if gate_up is not None:  # fast modes: one GEMM
            gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.mlp = GatedMLP(dim, MLP_RATIO * dim)
        self.input_layernorm = AdaptiveRMSNorm(dim)
        self.post_attention_layernorm = AdaptiveRMSNorm(dim)

    def forward(
        self, x: Tensor, c: Tensor, cos: Tensor, sin: Tensor, bias: Tensor | None, impl: str
    ) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x, c), cos, sin, bias, impl)
        return x + self.mlp(self.post_attention_layernorm(x, c))


class _DiffLlamaBase(nn.Module):
    """Shared layers; `run` processes an already assembled input sequence."""

    def __init__(
        self, hidden_size: int, num_layers: int, num_heads: int, *, cond_mlp: bool, attn_impl: str = "eager"
    ):
        super().__init__()
        H = hidden_size
        self.hidden_size = H
        self.num_heads = num_heads
        self.layers = nn.ModuleList(DecoderLayer(H, num_heads) for _ in range(num_layers))
        self.norm = AdaptiveRMSNorm(H)
        self.diff_step_mlp = mlp(H, MLP_RATIO * H, H)
        if cond_mlp:
            self.cond_mlp = mlp(H, MLP_RATIO * H, H)
        self.attn_impl = attn_impl  # "eager" (reference) or "sdpa" (fast mode); may be changed later
        # fused q/k/v and gate/up weights (opt-in, `fuse()`; measured no faster, see fuse())
        self.fuse_projections = False
        self.passes = 0  # forward passes run (benchmark counter)
        self.rows = 0  # sequences processed (batch rows summed over passes)

    def fuse(self) -> None:
        """Opt-in, for reduced precision only: concatenate every layer's q/k/v and gate/up
        weights once (`fuse_linears`); the fused GEMMs then run whenever no gradient is recorded.
        In bf16 on the CPU they are bit-identical to the separate GEMMs but were not faster at
        full size (docs/PERFORMANCE.md, issue 18) and hold ~70 % of the backbone's weights a
        second time in private memory, so nothing calls this by default. float32 never fuses."""
        if not all(p.dtype in REDUCED_PRECISION for p in self.layers.parameters()):
            raise ValueError("fused projections are a reduced-precision (bf16 / fp16) fast mode")
        for layer in self.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()
        self.fuse_projections = True

    @property
    def has_cond_mlp(self) -> bool:
        return hasattr(self, "cond_mlp")

    def time_embedding(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        """t (B,) -> c (B, H)."""
        return self.diff_step_mlp(time_sinusoid(t, self.hidden_size).to(dtype))

    def run(self, h: Tensor, t: Tensor, keep: Tensor | None = None) -> Tensor:
        """Layers + final norm over h (B, N, H); t (B,); keep (B, N) or None (all kept)."""
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")
        self.passes += 1
        self.rows += h.shape[0]
        c = self.time_embedding(t, h.dtype)  # (B, H)
        hd = self.hidden_size // self.num_heads
        cdt = compute_dtype(h.dtype)
        cos, sin = rotary_tables(h.shape[1], hd, h.device, cdt)  # positions 0..N-1
        bias = None if keep is None else key_padding_bias(keep, cdt)
        for layer in self.layers:
            h = layer(h, c, cos, sin, bias, self.attn_impl)
        return self.norm(h, c)


class DiffLlamaPrefix(_DiffLlamaBase):
    """Stage-1 backbone; `cond_mlp` exists iff phones are enabled."""

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        *,
        use_phone_cond: bool,
        attn_impl: str = "eager",
    ):
        super().__init__(hidden_size, num_layers, num_heads, cond_mlp=use_phone_cond, attn_impl=attn_impl)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        keep: Tensor | None = None,
        phone_emb: Tensor | None = None,
        phone_keep: Tensor | None = None,
    ) -> Tensor:
        """x (B, L, H), t (B,), keep (B, L), phone_emb (B, P, H) -> (B, L, H) (prefix dropped)."""
        if phone_emb is None or not self.has_cond_mlp:
            return self.run(x, t, keep)
        B, P = phone_emb.shape[:2]
        h = torch.cat([self.cond_mlp(phone_emb), x], dim=1)  # (B, P + L, H)
        if keep is not None or phone_keep is not None:
            ones = torch.ones(B, x.shape[1], device=x.device)
            keep = torch.cat(
                [
                    torch.ones(B, P, device=x.device) if phone_keep is None else phone_keep.to(x.device),
                    ones if keep is None else keep.to(x.device),
                ],
                dim=1,
            )
        return self.run(h, t, keep)[:, P:]


class DiffLlama(_DiffLlamaBase):
    """S2A backbone: input x + cond_mlp(cond)."""

    def __init__(self, hidden_size: int, num_layers: int, num_heads: int, *, attn_impl: str = "eager"):
        super().__init__(hidden_size, num_layers, num_heads, cond_mlp=True, attn_impl=attn_impl)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, keep: Tensor | None = None) -> Tensor:
        """x, cond (B, L, H), t (B,), keep (B, L) -> (B, L, H)."""
        return self.run(x + self.cond_mlp(cond), t, keep)

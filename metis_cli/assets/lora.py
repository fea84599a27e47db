"""LoRA + adapter assembly of the Metis stage-1 models (spec §1.3, §8).

The released VC/TSE/SE models come as three files: the base stage-1 weights, the task
adapter (`model.cond_adapter.*`) and LoRA pairs for the 7 linears of every transformer
layer. Unlike the official (non-strict) path, every file is checked completely: a missing,
unexpected, misnamed or reshaped tensor raises `CheckpointError` naming the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metis_cli.assets.checkpoint import build_on_meta, check_keys, load_state
from metis_cli.errors import CheckpointError
from metis_cli.nn.stage1 import MetisStage1, Stage1Config

# the 7 peft target modules of every layer (module-name suffixes of the official LoraConfig)
LORA_TARGETS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
ADAPTER_PREFIX = "model."  # adapter file keys: "model." + parameter name

_LORA_KEY = re.compile(
    r"(diff_estimator\.layers\.\d+\.(?:self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj))"
    r"\.lora_([AB])(?:\.default)?\.weight"
)


def lora_target_paths(model: nn.Module) -> list[str]:
    """Module paths of the LoRA-targeted linears, e.g. `diff_estimator.layers.0.self_attn.q_proj`."""
    n = len(model.diff_estimator.layers)
    return [f"diff_estimator.layers.{i}.{t}" for i in range(n) for t in LORA_TARGETS]


def expected_lora_shapes(model: nn.Module, r: int) -> dict[str, tuple[int, ...]]:
    """Official LoRA-file keys (`model.<path>.lora_{A,B}.default.weight`) and shapes for rank r."""
    out = {}
    for path in lora_target_paths(model):
        o, i = model.get_submodule(path).weight.shape
        out[f"model.{path}.lora_A.default.weight"] = (r, i)
        out[f"model.{path}.lora_B.default.weight"] = (o, r)
    return out


def normalize_lora_keys(tensors: Mapping[str, Tensor], *, source: str) -> dict[str, Tensor]:
    """Map known LoRA key spellings onto the official one.

    Accepted: a leading `module.`; then `base_model.model.`, `model.` or nothing; with or
    without the `.default` adapter name. Anything else is kept as is (and later reported).
    """
    out: dict[str, Tensor] = {}
    for key, t in tensors.items():
        k = key.removeprefix("module.")
        if k.startswith("base_model.model."):
            k = k[len("base_model.model.") :]
        elif k.startswith("model."):
            k = k[len("model.") :]
        m = _LORA_KEY.fullmatch(k)
        canon = f"model.{m[1]}.lora_{m[2]}.default.weight" if m else key
        if canon in out:
            raise CheckpointError(
                f"{source}: LoRA tensor {canon} appears twice (as {key} and another spelling)"
            )
        out[canon] = t
    return out


def merge_lora(
    model: nn.Module,
    lora_tensors: Mapping[str, Tensor],
    r: int,
    alpha: float,
    source: str,
    out_dtype: torch.dtype | None = None,
) -> None:
    """W <- W + (B @ A) * (alpha / r) for every targeted linear, in float32, in place.

    All 7 * num_layers pairs must be present with the shapes for rank r. Only the targeted
    weights are replaced (by new, owned tensors); the result keeps W's device and takes
    `out_dtype` (default W's dtype): casting each merged weight at once never holds a
    float32 copy of all merged weights next to their low-precision copies. Each product is
    written straight into its result tensor (a float32 merge allocates nothing else; a
    low-precision one reuses one float32 buffer), bit-identical to `W + (B @ A) * scale`.
    """
    lora = _checked_lora(model, lora_tensors, r, source)
    scale = alpha / r
    scratch: Tensor | None = None  # low-precision targets: one float32 work buffer for all weights
    for path in lora_target_paths(model):
        lin = model.get_submodule(path)
        w = lin.weight
        dtype = out_dtype or w.dtype
        a = lora[f"model.{path}.lora_A.default.weight"].to(w.device, torch.float32)
        b = lora[f"model.{path}.lora_B.default.weight"].to(w.device, torch.float32)
        if dtype == torch.float32:
            out = torch.empty(w.shape, dtype=torch.float32, device=w.device)  # the merged weight
        else:
            if scratch is None or scratch.numel() < w.numel() or scratch.device != w.device:
                scratch = torch.empty(w.numel(), dtype=torch.float32, device=w.device)
            out = scratch[: w.numel()].view(w.shape)
        # the same three roundings as `w.float() + (b @ a) * scale` (product, then scale, then
        # the sum; addition commutes exactly), without that expression's two temporaries
        torch.mm(b, a, out=out)
        out.mul_(scale).add_(w.detach().float())
        merged = out if dtype == torch.float32 else out.to(dtype)
        lin.weight = nn.Parameter(merged, requires_grad=w.requires_grad)


def _checked_lora(model: nn.Module, lora_tensors: Mapping[str, Tensor], r: int, source: str) -> dict:
    if r <= 0:
        raise CheckpointError(f"{source}: LoRA rank must be positive, got {r}")
    lora = normalize_lora_keys(lora_tensors, source=source)
    check_keys(
        expected_lora_shapes(model, r),
        {k: tuple(v.shape) for k, v in lora.items()},
        source=f"{source} (LoRA)",
    )
    return lora


class LoraLinear(nn.Module):
    """Unmerged LoRA linear: base(x) + lora_B(lora_A(x)) * scale (peft's order, no dropout)."""

    def __init__(self, base: nn.Linear, lora_a: Tensor, lora_b: Tensor, scale: float):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Parameter(lora_a)  # (r, in)
        self.lora_B = nn.Parameter(lora_b)  # (out, r)
        self.scale = scale

    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.base_layer(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale


def apply_unmerged_lora(
    model: nn.Module, lora_tensors: Mapping[str, Tensor], r: int, alpha: float, source: str
) -> None:
    """Wrap every targeted linear in a `LoraLinear` (for training and for checking merges)."""
    lora = _checked_lora(model, lora_tensors, r, source)
    for path in lora_target_paths(model):
        parent_path, name = path.rsplit(".", 1)
        parent = model.get_submodule(parent_path)
        base = getattr(parent, name)
        w = base.weight
        a = lora[f"model.{path}.lora_A.default.weight"].to(w.device, w.dtype)
        b = lora[f"model.{path}.lora_B.default.weight"].to(w.device, w.dtype)
        setattr(parent, name, LoraLinear(base, a, b, alpha / r))


def _adapter_expected(model: MetisStage1) -> dict[str, tuple[int, ...]]:
    return {
        ADAPTER_PREFIX + k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if k.startswith("cond_adapter.")
    }


def load_adapter(model: MetisStage1, adapter_tensors: Mapping[str, Tensor], source: str) -> None:
    """Overwrite the adapter from an adapter file (`model.cond_adapter.*`, strict).

    Tensors take the model's dtype and device (not the file's, unlike the official loader).
    """
    if not model.has_adapter:
        raise CheckpointError(f"{source}: the stage-1 model has no condition adapter to load into")
    check_keys(
        _adapter_expected(model),
        {k: tuple(v.shape) for k, v in adapter_tensors.items()},
        source=f"{source} (adapter)",
    )
    ref = model.to_logit.weight
    state = {}
    for k, v in adapter_tensors.items():
        name = k[len(ADAPTER_PREFIX) :].removeprefix("cond_adapter.")
        state[name] = v if ref.is_meta else v.to(ref.device, ref.dtype)
    model.cond_adapter.load_state_dict(state, strict=True, assign=True)


def lora_stage1_config(cfg: Stage1Config, source: str) -> Stage1Config:
    """The config of an assembled LoRA-path model (always the gated adapter)."""
    if cfg.ft_type in (None, "tts"):
        raise CheckpointError(f"{source}: LoRA assembly needs a task with an adapter, got {cfg.ft_type!r}")
    return replace(cfg, adapter="gated")


def assemble_lora_stage1(
    cfg: Stage1Config,
    base_tensors: Mapping[str, Tensor],
    adapter_tensors: Mapping[str, Tensor],
    lora_tensors: Mapping[str, Tensor],
    r: int,
    alpha: float,
    sources: tuple[str, str, str],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> MetisStage1:
    """Build a LoRA-path stage-1 model (always the gated adapter): base -> adapter -> merge.

    `sources` names the (base, adapter, LoRA) files in errors. The base must hold exactly
    the non-adapter keys; the merge runs in float32 before an optional cast to `dtype`.
    """
    base_src, adapter_src, lora_src = sources
    cfg = lora_stage1_config(cfg, lora_src)
    model = build_on_meta(lambda: MetisStage1(cfg))
    full = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_keys(
        {k: s for k, s in full.items() if not k.startswith("cond_adapter.")},
        {k: tuple(v.shape) for k, v in base_tensors.items()},
        source=f"{base_src} (base)",
    )
    check_keys(
        _adapter_expected(model),
        {k: tuple(v.shape) for k, v in adapter_tensors.items()},
        source=f"{adapter_src} (adapter)",
    )
    state = dict(base_tensors)
    for k, v in adapter_tensors.items():
        state[k[len(ADAPTER_PREFIX) :]] = v
    load_state(model, state, source=base_src, dtype=torch.float32, device=device)
    merge_lora(model, lora_tensors, r, alpha, lora_src, out_dtype=dtype)
    if dtype is not None:
        model.to(dtype)
    return model

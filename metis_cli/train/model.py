"""Trainable stage-1 models and the files a fine-tuned model folder holds.

Fine-tuning starts from a model card (a released model, `metis-base`, or a folder written by
`metis pretrain` / `metis finetune`):

* LoRA mode (default): the base weights stay frozen; the 7 projections of every transformer
  layer get unmerged LoRA pairs (`lora.LoraLinear`) and the gated adapter is trained. From a
  LoRA card both continue from its files; from a base card they start fresh: A like a
  `nn.Linear` weight (Kaiming-uniform), B = 0, adapter Linears default-initialised and the gate
  at 0 (the official SimpleAdapter), so the untrained model equals the base.
* Full mode: every stage-1 parameter trains (a LoRA start is merged first).
* From a start with one full stage-1 file (`maskgct-t2s` for tts, `metis-l2s` for l2s, a
  `--full` result) LoRA pairs (and the adapter, if the model has one) train on top of it, and
  the export merges them into one `stage1.safetensors` (there is no official LoRA layout for
  such models; the released L2S model is full-scale, with a plain, ungated adapter).
* l2s starts only from such a full l2s model: its plain adapter reads the visual features,
  which no other start has (`metis-base` would need a fresh adapter of the visual width).

Exports use the official file naming (spec §8): `lora.safetensors`
(`model.<path>.lora_{A,B}.default.weight`), `adapter.safetensors` (`model.cond_adapter.*`),
or a single `stage1.safetensors` with plain `MetisStage1` keys, plus `card.json`.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from metis_cli.assets import checkpoint
from metis_cli.assets.cards import DEFAULT_MODEL, FileSpec, ModelCard, ModelStore, get_card
from metis_cli.assets.lora import (
    ADAPTER_PREFIX,
    LoraLinear,
    apply_unmerged_lora,
    assemble_lora_stage1,
    load_adapter,
    lora_target_paths,
)
from metis_cli.assets.umask import apply_umask
from metis_cli.errors import InputError, UsageError
from metis_cli.nn.stage1 import MetisStage1, Stage1Config

LORA_FILE, ADAPTER_FILE, STAGE1_FILE, BASE_FILE = (
    "lora.safetensors",
    "adapter.safetensors",
    "stage1.safetensors",
    "base.safetensors",
)


@dataclass
class Trainable:
    """A stage-1 model in training and what is trained."""

    model: MetisStage1
    mode: str  # "lora" | "full" (pretrain is "full" without adapter)
    block: dict[str, Any]  # the `t2s_model` config block it was built from
    start: ModelCard  # the card training started from
    r: int = 0
    alpha: float = 0.0
    merged_export: bool = False  # LoRA on a full-file start: export merged weights

    def named_trainable(self) -> list[tuple[str, nn.Parameter]]:
        """Trained parameters in a fixed order (the optimizer's order)."""
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]


# LoRA rank and alpha of a fresh LoRA per task: those of the released models (spec §1.3);
# tts and l2s have no released LoRA, they get the SE/TSE values.
DEFAULT_LORA = {"se": (32, 64.0), "tse": (32, 64.0), "vc": (16, 32.0), "tts": (32, 64.0), "l2s": (32, 64.0)}


def _file(store: ModelStore, card: ModelCard, role: str) -> Path:
    path = store.path(card, role)
    store.verify(card, role, path)
    return path


def _tensors(store: ModelStore, card: ModelCard, role: str) -> tuple[dict, str]:
    path = _file(store, card, role)
    return checkpoint.read_tensors(path), str(path)


def _fresh_adapter(model: MetisStage1, gen: torch.Generator) -> None:
    """Default Linear init for the adapter's Linears (seeded); gate 0 (output starts at zero)."""
    ad = model.cond_adapter
    for lin in (ad.in_linear, ad.out_linear):
        shape = tuple(lin.weight.shape)
        lin.weight = nn.Parameter(_kaiming(shape, gen).to(lin.weight))
        bias = (torch.rand(shape[0], generator=gen) * 2 - 1) / math.sqrt(shape[1])
        lin.bias = nn.Parameter(bias.to(lin.bias))
    ad.gate_scale = nn.Parameter(torch.zeros_like(ad.gate_scale))


def _kaiming(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """nn.Linear's default weight init, Kaiming-uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))."""
    bound = 1 / math.sqrt(shape[1])
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


def fresh_lora(model: MetisStage1, r: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """New LoRA pairs in the official naming: A Kaiming-uniform (r, in), B zeros (out, r)."""
    out = {}
    for path in lora_target_paths(model):
        o, i = model.get_submodule(path).weight.shape
        out[f"model.{path}.lora_A.default.weight"] = _kaiming((r, i), gen)
        out[f"model.{path}.lora_B.default.weight"] = torch.zeros(o, r)
    return out


def _base_model(cfg: Stage1Config, state: dict, source: str, device: torch.device) -> MetisStage1:
    """Build a model with `cfg` and load every non-adapter key from `state` (strict)."""
    model = checkpoint.build_on_meta(lambda: MetisStage1(cfg))
    if model.has_adapter:
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        checkpoint.check_keys(
            {k: s for k, s in shapes.items() if not k.startswith("cond_adapter.")},
            {k: tuple(v.shape) for k, v in state.items()},
            source=f"{source} (base)",
        )
        full = dict(state)
        for k, v in model.cond_adapter.state_dict().items():
            full[f"cond_adapter.{k}"] = torch.zeros(v.shape)  # replaced by the caller
        state = full
    checkpoint.load_state(model, state, source=source, dtype=torch.float32, device=device)
    return model


def build_finetune(
    store: ModelStore,
    start: ModelCard,
    task: str,
    *,
    full: bool,
    rank: int | None,
    alpha: float | None,
    seed: int,
    device: torch.device,
) -> Trainable:
    """The trainable model for fine-tuning `start` on `task` (se, tse, vc, tts, l2s)."""
    block = copy.deepcopy(store.config(start)["t2s_model"])
    layout = start.stage1.get("layout", "full") if start.task else "base"
    if task == "l2s" and (layout != "full" or start.stage1.get("ft_type") != "l2s"):
        raise InputError(
            f"l2s fine-tunes from metis-l2s or a model fine-tuned from it, not '{start.name}' "
            "(its adapter must read the visual features)"
        )
    gen = torch.Generator().manual_seed(seed)
    merged = False
    if layout == "lora":
        if start.stage1.get("ft_type") != task:
            raise InputError(f"model '{start.name}' is a {start.stage1.get('ft_type')} model, not {task}")
        r, a = int(block["lora_r"]), float(block["lora_alpha"])
        if (rank is not None and rank != r) or (alpha is not None and alpha != a):
            raise UsageError(
                f"model '{start.name}' has LoRA rank {r}, alpha {a:g}; start from metis-base to change them"
            )
        (bt, bs), (at, as_), (lt, ls) = (_tensors(store, start, x) for x in ("base", "adapter", "lora"))
        cfg = Stage1Config.from_dict(block, task, lora_path=True)
        if full:
            model = assemble_lora_stage1(cfg, bt, at, lt, r=r, alpha=a, sources=(bs, as_, ls), device=device)
        else:
            model = _base_model(replace(cfg, adapter="gated"), bt, bs, device)
            load_adapter(model, at, as_)
            apply_unmerged_lora(model, lt, r, a, ls)
    elif layout == "base":
        bt, bs = _tensors(store, start, "base")
        r, a = _fresh_rank(task, rank, alpha)
        cfg = Stage1Config.from_dict(block, task, lora_path=not full)
        model = _base_model(cfg, bt, bs, device)
        if model.has_adapter:
            _fresh_adapter(model, gen)
        if not full:
            apply_unmerged_lora(model, fresh_lora(model, r, gen), r, a, "new LoRA")
    else:
        if start.stage1.get("ft_type") != task:
            raise InputError(f"model '{start.name}' is a {start.stage1.get('ft_type')} model, not {task}")
        st, ss = _tensors(store, start, "stage1")
        cfg = Stage1Config.from_dict(block, task)
        model = checkpoint.build_on_meta(lambda: MetisStage1(cfg))
        checkpoint.load_state(model, st, source=ss, dtype=torch.float32, device=device)
        r, a = _fresh_rank(task, rank, alpha)
        if not full:
            apply_unmerged_lora(model, fresh_lora(model, r, gen), r, a, "new LoRA")
            merged = True
    model.to(device).train()
    if task == "tts" and not model.has_phones:
        raise InputError(f"model '{start.name}' has no phone input: fine-tune tts from maskgct-t2s")
    if task != "tts" and not model.has_adapter:
        raise InputError(f"task '{task}' of model '{start.name}' has no condition adapter to train")
    for name, p in model.named_parameters():
        p.requires_grad_(full or name.startswith("cond_adapter.") or name.endswith((".lora_A", ".lora_B")))
    if full:
        r, a = 0, 0.0
    return Trainable(model, "full" if full else "lora", block, start, r, a, merged_export=merged)


def _fresh_rank(task: str, rank: int | None, alpha: float | None) -> tuple[int, float]:
    r0, a0 = DEFAULT_LORA[task]
    r = r0 if rank is None else int(rank)
    if r <= 0:
        raise UsageError(f"--lora-r: must be an integer >= 1 (got {r})")
    a = float((a0 if r == r0 else 2 * r) if alpha is None else alpha)
    return r, a


def build_pretrain(store: ModelStore, start: ModelCard, device: torch.device) -> Trainable:
    """Every parameter of a base (no adapter) stage-1 model trains."""
    if "base" not in start.files or start.stage1.get("layout") == "lora":
        raise InputError(
            f"model '{start.name}' is not a base model (pre-train metis-base or a pretrain folder)"
        )
    block = copy.deepcopy(store.config(start)["t2s_model"])
    bt, bs = _tensors(store, start, "base")
    model = _base_model(Stage1Config.from_dict(block, None), bt, bs, device).to(device).train()
    for p in model.parameters():
        p.requires_grad_(True)
    return Trainable(model, "full", block, start)


def build_scratch(config: dict[str, Any], seed: int, device: torch.device) -> Trainable:
    """A randomly initialised base stage-1 model from a `t2s_model` config block (seeded).

    `use_phone_cond` defaults to false here (pre-training sees no text).
    """
    block = copy.deepcopy(config)
    block.setdefault("use_phone_cond", False)
    for key in ("hidden_size", "num_layers", "num_heads", "cond_codebook_size"):
        if key not in block:
            raise InputError(f"the t2s_model config block needs '{key}'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MetisStage1(Stage1Config.from_dict(block, None))
    model.to(device).train()
    for p in model.parameters():
        p.requires_grad_(True)
    return Trainable(model, "full", block, get_card("metis-base"))


# -- export ------------------------------------------------------------------------------------------
def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA pairs of a model wrapped by `apply_unmerged_lora`, in the official naming."""
    out = {}
    for path in lora_target_paths(model):
        lin = model.get_submodule(path)
        if not isinstance(lin, LoraLinear):
            raise TypeError(f"{path} is not a LoRA layer")
        out[f"model.{path}.lora_A.default.weight"] = lin.lora_A.detach()
        out[f"model.{path}.lora_B.default.weight"] = lin.lora_B.detach()
    return out


def adapter_state(model: MetisStage1) -> dict[str, torch.Tensor]:
    """`model.cond_adapter.*` tensors of the adapter file."""
    state = model.cond_adapter.state_dict()
    return {f"{ADAPTER_PREFIX}cond_adapter.{k}": v.detach() for k, v in state.items()}


def merged_state(model: MetisStage1) -> dict[str, torch.Tensor]:
    """Plain `MetisStage1` keys with every LoRA pair merged: W + (B @ A) * alpha / r."""
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith((".lora_A", ".lora_B")):
            continue
        out[k.replace(".base_layer.", ".")] = v.detach()
    for path in lora_target_paths(model):
        lin = model.get_submodule(path)
        w = lin.base_layer.weight.detach().float()
        out[f"{path}.weight"] = w + (lin.lora_B.detach().float() @ lin.lora_A.detach().float()) * lin.scale
    return out


def plain_state(model: MetisStage1) -> dict[str, torch.Tensor]:
    """Plain `MetisStage1` keys (no LoRA wrappers allowed)."""
    state = model.state_dict()
    if any(".base_layer." in k or k.endswith((".lora_A", ".lora_B")) for k in state):
        raise TypeError("plain_state of a model with unmerged LoRA layers")
    return {k: v.detach() for k, v in state.items()}


def _save(path: Path, state: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, str(tmp))
        apply_umask(tmp)  # save_file creates 0600; exported weights are shared like any output
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _spec_dict(spec: FileSpec) -> dict[str, Any]:
    d: dict[str, Any] = {"path": spec.path}
    if spec.size:
        d["size"] = spec.size
    if spec.manifest:
        d["manifest"] = spec.manifest
    return d


def _base_entry(tr: Trainable, out: Path) -> dict[str, Any]:
    """The card entry of the (frozen) base file: the start's own, or a copy of a local one."""
    spec = tr.start.files["base"]
    if not spec.local:
        return _spec_dict(spec)
    src = tr.start.local_dir / spec.path
    if src.resolve() != (out / BASE_FILE).resolve():
        shutil.copyfile(src, out / BASE_FILE)
    return {"path": BASE_FILE, "local": True}


def export(tr: Trainable, out: Path, task: str | None, name: str, info: dict[str, Any]) -> Path:
    """Write the model files and `card.json` into `out`; returns the card path."""
    out.mkdir(parents=True, exist_ok=True)
    block = copy.deepcopy(tr.block)
    if task is None:  # pretrain: a new base
        _save(out / "model.safetensors", plain_state(tr.model))
        files = {"base": {"path": "model.safetensors", "local": True}}
        ref, stage1 = tr.start, {}
    else:
        ref = get_card(DEFAULT_MODEL[task])
        if tr.mode == "lora" and tr.merged_export:
            _save(out / STAGE1_FILE, merged_state(tr.model))
            files = {"stage1": {"path": STAGE1_FILE, "local": True}}
            for k in ("use_lora", "lora_r", "lora_alpha"):
                block.pop(k, None)
            stage1 = {"layout": "full", "ft_type": task}
        elif tr.mode == "lora":
            _save(out / LORA_FILE, lora_state(tr.model))
            _save(out / ADAPTER_FILE, adapter_state(tr.model))
            files = {
                "base": _base_entry(tr, out),
                "adapter": {"path": ADAPTER_FILE, "local": True},
                "lora": {"path": LORA_FILE, "local": True},
            }
            block.update(use_lora=True, lora_r=tr.r, lora_alpha=tr.alpha)
            stage1 = {"layout": "lora", "ft_type": task}
        else:
            _save(out / STAGE1_FILE, plain_state(tr.model))
            files = {"stage1": {"path": STAGE1_FILE, "local": True}}
            for k in ("use_lora", "lora_r", "lora_alpha"):
                block.pop(k, None)
            stage1 = {"layout": "full", "ft_type": task}
    what = f"fine-tuned {task}" if task else "pre-trained base"
    card: dict[str, Any] = {
        "name": name,
        "description": f"{what} from {info.get('start', tr.start.name)}",
        "task": task,
        "repo": tr.start.repo,
        "license": ref.license,
        "requires": list(ref.requires),
        "stage1": stage1,
        "files": files,
        "config": {"t2s_model": block},
        "decoding": ref.decoding,
        "training": info,
    }
    if task is not None and "visual_encoder" in ref.extra:  # l2s: where to get the encoder
        card["visual_encoder"] = ref.extra["visual_encoder"]
    if task is None:
        card.pop("task")
        card.pop("stage1")
        card.pop("decoding")
    path = out / "card.json"
    tmp = path.with_name("card.json.tmp")
    tmp.write_text(json.dumps(card, indent=1) + "\n")
    tmp.replace(path)
    return path

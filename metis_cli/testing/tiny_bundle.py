"""A tiny random model bundle in the official file layout, for tests without downloads.

    python -m metis_cli.testing.tiny_bundle DIR

writes every component at tiny size exactly where the official files live
(`DIR/amphion/MaskGCT/...`, `DIR/amphion/metis/...`, `DIR/facebook/w2v-bert-2.0/...`) plus
`DIR/metis_config_overrides.json`, which says the tiny dimensions. `--checkpoint-dir DIR` then
runs every command through exactly the code path the official files take. A tiny Auto-AVSR
visual encoder is written to `DIR/visual/model.pth` (+ `model.json`) for `metis l2s`.

Weights are random (seeded), initialised like the golden vectors (matrices N(0,1)/sqrt(fan_in),
biases 0.1·N, norm scales 1 + 0.1·N, ...), so outputs are deterministic but meaningless.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from metis_cli.assets.cards import OVERRIDES_FILE, get_card
from metis_cli.constants import PHONE_PAD_ID

SSL_HIDDEN = 16  # tiny w2v-BERT width (= semantic codec hidden = adapter cond_dim)
SEMANTIC_VOCAB = 32  # tiny semantic codebook
ACOUSTIC_VOCAB = 64  # tiny acoustic codebook (per codebook)

TINY_T2S = {
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 2,
    "cond_codebook_size": SEMANTIC_VOCAB,
    "cfg_scale": 0.15,
    "cond_dim": SSL_HIDDEN,
}
TINY_S2A = {
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 2,
    "codebook_size": ACOUSTIC_VOCAB,
    "cfg_scale": 0.15,
    "mask_layer_schedule": "linear",
    "cond_codebook_size": SEMANTIC_VOCAB,
    "cond_dim": 32,
}
TINY_LORA = {"se": (4, 8), "tse": (4, 8), "vc": (2, 6)}  # (r, alpha)


def overrides(visual_dim: int) -> dict[str, Any]:
    """Config overrides (merged into the shipped cards) that describe the tiny bundle."""
    out: dict[str, Any] = {
        "maskgct-codecs": {
            "semantic_codec": {
                "codebook_size": SEMANTIC_VOCAB,
                "hidden_size": SSL_HIDDEN,
                "codebook_dim": 4,
                "vocos_dim": 16,
                "vocos_intermediate_dim": 32,
                "vocos_num_layers": 2,
            },
            "acoustic_codec": {
                "encoder": {"d_model": 4},
                "decoder": {
                    "codebook_size": ACOUSTIC_VOCAB,
                    "codebook_dim": 4,
                    "vocos_dim": 16,
                    "vocos_intermediate_dim": 32,
                    "vocos_num_layers": 2,
                },
            },
        },
        "maskgct-s2a": {
            "s2a_1layer": {**TINY_S2A, "num_quantizer": 1, "predict_layer_1": True},
            "s2a_full": {**TINY_S2A, "num_quantizer": 12, "predict_layer_1": False},
        },
        "maskgct-t2s": {"t2s_model": {**TINY_T2S, "use_phone_cond": True}},
        "metis-base": {"t2s_model": {**TINY_T2S, "use_phone_cond": False}},
        "metis-l2s": {"t2s_model": {**TINY_T2S, "use_phone_cond": False, "cond_dim": visual_dim}},
        "metis-omni": {"t2s_model": {**TINY_T2S, "use_phone_cond": True}},
    }
    for task, name in (("se", "metis-se-lora32"), ("tse", "metis-tse-lora32"), ("vc", "metis-vc-lora16")):
        r, alpha = TINY_LORA[task]
        out[name] = {
            "t2s_model": {
                **TINY_T2S,
                "use_phone_cond": False,
                "use_lora": True,
                "lora_r": r,
                "lora_alpha": alpha,
            }
        }
    return out


def randomize(module: nn.Module, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A state dict with every floating tensor drawn like the golden vectors' weights."""
    state = {}
    for name, t in module.state_dict().items():
        if not t.is_floating_point():
            state[name] = t.clone()
            continue
        leaf = name.rsplit(".", 1)[-1]
        shape = tuple(t.shape)
        n = torch.randn(shape, generator=gen)
        if name.endswith("istft.window"):
            v = torch.hann_window(shape[0], periodic=True)
        elif leaf == "weight_g":
            v = 0.3 + 0.3 * torch.rand(shape, generator=gen)
        elif leaf == "alpha":
            v = 0.5 + torch.rand(shape, generator=gen)
        elif leaf == "gamma":
            v = 0.25 + 0.05 * n
        elif leaf == "gate_scale":
            v = 0.5 + 0.1 * n
        elif name.endswith("to_weight.bias"):
            v = 1.0 + 0.1 * n
        elif name.endswith("to_weight.weight"):
            v = 0.3 * n / math.sqrt(shape[1])
        elif len(shape) == 1 and "norm" in name and leaf == "weight":
            v = 1.0 + 0.1 * n
        elif len(shape) == 1:
            v = 0.1 * n
        elif len(shape) == 0 or shape[0] == 0:
            v = n
        else:
            v = n / math.sqrt(max(1, math.prod(shape[1:])))
        if name == "phone_emb.weight":
            v[PHONE_PAD_ID] = 0.0
        state[name] = v.to(t.dtype).contiguous()
    return state


def _save(path: Path, state: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _repo_dir(root: Path, card_name: str, lowercase: bool = False) -> Path:
    repo = get_card(card_name).repo
    return root / (repo.lower() if lowercase else repo)


def write_tiny_bundle(root: str | Path, seed: int = 0) -> Path:
    """Write the tiny bundle to `root` and return it."""
    from metis_cli.assets.visual_checkpoint import save_tiny_visual_checkpoint
    from metis_cli.nn.acoustic_codec import AcousticCodecConfig, CodecDecoder, CodecEncoder
    from metis_cli.nn.s2a import MaskGCTS2A, S2AConfig
    from metis_cli.nn.semantic_codec import SemanticCodec, SemanticCodecConfig
    from metis_cli.nn.stage1 import MetisStage1, Stage1Config
    from metis_cli.testing.tiny_ssl import write_tiny_w2v_bert

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    # visual encoder first: its width is the L2S adapter's cond_dim
    pth, json_path = save_tiny_visual_checkpoint(root / "visual", seed=seed)
    visual_dim = _visual_width(json_path)
    over = overrides(visual_dim)
    (root / OVERRIDES_FILE).write_text(json.dumps(over, indent=1) + "\n")

    def cfg(card: str, block: str) -> dict:
        merged = dict(get_card(card).config[block]) if block in get_card(card).config else {}
        return _merge(merged, over.get(card, {}).get(block, {}))

    write_tiny_w2v_bert(_repo_dir(root, "w2v-bert-2.0"), hidden_size=SSL_HIDDEN, num_layers=18, seed=seed)

    codecs = get_card("maskgct-codecs")
    mg = _repo_dir(root, "maskgct-codecs")
    sem = SemanticCodec(SemanticCodecConfig.from_dict(cfg("maskgct-codecs", "semantic_codec")))
    _save(mg / codecs.files["semantic_codec"].path, randomize(sem, gen))
    ac = AcousticCodecConfig.from_dict(cfg("maskgct-codecs", "acoustic_codec"))
    _save(mg / codecs.files["acoustic_encoder"].path, randomize(CodecEncoder(ac.encoder), gen))
    _save(mg / codecs.files["acoustic_decoder"].path, randomize(CodecDecoder(ac.decoder), gen))

    s2a = get_card("maskgct-s2a")
    for role in ("s2a_1layer", "s2a_full"):
        model = MaskGCTS2A(S2AConfig.from_dict(cfg("maskgct-s2a", role)))
        state = randomize(model, gen)
        state["diff_estimator.embed_tokens.weight"] = torch.zeros(0, 256)  # as in the official files
        _save(mg / s2a.files[role].path, state)

    t2s = get_card("maskgct-t2s")
    model = MetisStage1(Stage1Config.from_dict(cfg("maskgct-t2s", "t2s_model"), "tts"))
    _save(mg / t2s.files["stage1"].path, randomize(model, gen))

    # amphion/Metis written as "amphion/metis": the Hub matches repo ids case-insensitively
    metis = _repo_dir(root, "metis-base", lowercase=True)
    base = MetisStage1(Stage1Config.from_dict(cfg("metis-base", "t2s_model"), None))
    _save(metis / get_card("metis-base").files["base"].path, randomize(base, gen))
    for task, name in (("se", "metis-se-lora32"), ("tse", "metis-tse-lora32"), ("vc", "metis-vc-lora16")):
        card = get_card(name)
        block = cfg(name, "t2s_model")
        full = MetisStage1(Stage1Config.from_dict(block, task))
        state = randomize(full, gen)
        adapter = {f"model.{k}": v for k, v in state.items() if k.startswith("cond_adapter.")}
        _save(metis / card.files["adapter"].path, adapter)
        _save(metis / card.files["lora"].path, _lora_tensors(base, block["lora_r"], gen))
    for name, task in (("metis-l2s", "l2s"), ("metis-omni", "omni")):
        card = get_card(name)
        model = MetisStage1(Stage1Config.from_dict(cfg(name, "t2s_model"), task))
        _save(metis / card.files["stage1"].path, randomize(model, gen))
    return root


def _lora_tensors(base: nn.Module, r: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """LoRA A/B pairs for the 7 projections of every layer, in the official file naming."""
    out = {}
    for name, mod in base.named_modules():
        if (
            isinstance(mod, nn.Linear)
            and name.startswith("diff_estimator.layers.")
            and name.endswith("_proj")
        ):
            fan_out, fan_in = mod.weight.shape
            out[f"model.{name}.lora_A.default.weight"] = torch.randn(r, fan_in, generator=gen) / math.sqrt(
                fan_in
            )
            out[f"model.{name}.lora_B.default.weight"] = (
                0.5 * torch.randn(fan_out, r, generator=gen) / math.sqrt(r)
            )
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _visual_width(json_path: Path) -> int:
    from metis_cli.assets.visual_checkpoint import read_visual_config

    return read_visual_config(json_path).adim


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="where to write the bundle")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_tiny_bundle(args.dir, args.seed)


if __name__ == "__main__":
    main()

"""Write full-size random-weight checkpoints in the official layout (for benchmarks only).

    python benchmarks/make_full_size.py [--dir .bench_cache] [--tasks se tts]

Writes, under DIR, the files that the given tasks need at the released sizes:
`facebook/w2v-bert-2.0/{config.json, preprocessor_config.json, model.safetensors}`,
`amphion/MaskGCT/{semantic_codec, acoustic_codec, s2a_model}/...`, and for SE
`amphion/Metis/metis_base/model.safetensors` + the SE LoRA r32 pair (TTS adds
`amphion/MaskGCT/t2s_model/model.safetensors`). About 9 GB for SE. Files already present
(and matching their manifest) are skipped.

Modules are built on the meta device (nothing is allocated or initialised); every tensor is
then drawn straight from a seeded generator and streamed to disk one tensor at a time by a
small safetensors writer, so memory stays at the size of the largest tensor. Weights follow
the tiny bundle's scheme: matrices N(0, 1/fan_in), norm scales 1, biases 0, weight-norm
gains ~0.5, gate_scale 0.5, iSTFT window = periodic Hann. Outputs are meaningless but the
arithmetic (and so the cost) is exactly the released models'.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from metis_cli.assets.cards import ModelStore, get_card
from metis_cli.assets.checkpoint import build_on_meta
from metis_cli.errors import CheckpointError

log = logging.getLogger("make_full_size")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO_ROOT / ".bench_cache"

# facebook/w2v-bert-2.0 (released config.json; only what differs from the transformers defaults
# or matters for the shapes and the arithmetic)
W2V_BERT_CONFIG = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "feature_projection_input_dim": 160,
    "output_hidden_size": 1024,
    "conv_depthwise_kernel_size": 31,
    "position_embeddings_type": "relative_key",
    "left_max_position_embeddings": 64,
    "right_max_position_embeddings": 8,
    "add_adapter": False,
    "use_intermediate_ffn_before_adapter": False,
    "vocab_size": None,
}
_ST_NAME = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
LORA_R = {"metis-se-lora32": 32, "metis-tse-lora32": 32, "metis-vc-lora16": 16}


# -- tensors ------------------------------------------------------------------------------------
def draw(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """One float32 tensor of `shape` for parameter `name` (init scheme in the module docstring)."""
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("istft.window"):
        return torch.hann_window(shape[0], periodic=True)
    if len(shape) == 0 or math.prod(shape) == 0:
        return torch.zeros(shape)
    if leaf == "weight_g":
        return torch.full(shape, 0.5)
    if leaf == "alpha":
        return torch.ones(shape)
    if leaf == "gamma":
        return torch.full(shape, 0.25)
    if leaf == "gate_scale":
        return torch.full(shape, 0.5)
    if name.endswith("to_weight.bias"):
        return torch.ones(shape)
    if len(shape) == 1:
        norm_like = "norm" in name or "layer_norm" in name or leaf in ("weight", "scale")
        return torch.ones(shape) if norm_like and leaf != "bias" else torch.zeros(shape)
    fan_in = max(1, math.prod(shape[1:]))
    scale = 0.3 / math.sqrt(fan_in) if name.endswith("to_weight.weight") else 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).normal_(generator=gen).mul_(scale)


def write_safetensors(
    path: Path, spec: dict[str, tuple[tuple[int, ...], torch.dtype]], make: Callable[[str], torch.Tensor]
) -> None:
    """Stream a safetensors file: header from `spec` (key -> (shape, dtype)), then each tensor.

    `make(key)` is called once per key, in header order, and its result dropped after writing.
    Written to `path.part` and renamed, so a killed run leaves no truncated file behind.
    """
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, (shape, dtype) in spec.items():
        n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[key] = {"dtype": _ST_NAME[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with tmp.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for key, (shape, dtype) in spec.items():
            t = make(key)
            if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                raise ValueError(f"{key}: made {tuple(t.shape)} {t.dtype}, header says {shape} {dtype}")
            if t.numel():
                fh.write(memoryview(t.contiguous().view(torch.uint8).numpy()))
    tmp.replace(path)


def module_spec(module: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{key: (shape, dtype)} of a (meta) module's state dict."""
    return {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}


def write_random(path: Path, spec: dict, gen: torch.Generator, rename: Callable[[str], str] = str) -> None:
    """Random tensors for `spec`; `rename(key)` is the parameter name the init scheme sees."""
    write_safetensors(path, spec, lambda k: draw(rename(k), spec[k][0], gen).to(spec[k][1]))


# -- files --------------------------------------------------------------------------------------
def _cfg(card: str, block: str) -> dict:
    return ModelStore(offline=True).config(get_card(card))[block]


def _repo(root: Path, card: str) -> Path:
    return root / get_card(card).repo


def jobs_for(tasks: list[str], root: Path) -> Iterator[tuple[str, str, Path, Callable[[Path], None]]]:
    """(card, role, path, writer) for every file the tasks need; writers take the target path."""
    from metis_cli.nn.acoustic_codec import AcousticCodecConfig, CodecDecoder, CodecEncoder
    from metis_cli.nn.s2a import MaskGCTS2A, S2AConfig
    from metis_cli.nn.semantic_codec import SemanticCodec, SemanticCodecConfig
    from metis_cli.nn.stage1 import MetisStage1, Stage1Config

    gen = torch.Generator().manual_seed(0)
    w2v = get_card("w2v-bert-2.0")
    yield (
        "w2v-bert-2.0",
        "weights",
        _repo(root, "w2v-bert-2.0") / w2v.files["weights"].path,
        (lambda p: write_w2v_bert(p.parent, gen)),
    )
    codecs, mg = get_card("maskgct-codecs"), _repo(root, "maskgct-codecs")
    ac = AcousticCodecConfig.from_dict(_cfg("maskgct-codecs", "acoustic_codec"))
    builders = {
        "semantic_codec": lambda: SemanticCodec(
            SemanticCodecConfig.from_dict(_cfg("maskgct-codecs", "semantic_codec"))
        ),
        "acoustic_encoder": lambda: CodecEncoder(ac.encoder),
        "acoustic_decoder": lambda: CodecDecoder(ac.decoder),
    }
    for role, build in builders.items():
        yield (
            "maskgct-codecs",
            role,
            mg / codecs.files[role].path,
            (lambda p, b=build: write_random(p, module_spec(build_on_meta(b)), gen)),
        )
    s2a = get_card("maskgct-s2a")
    for role in ("s2a_1layer", "s2a_full"):

        def write_s2a(p: Path, role: str = role) -> None:
            spec = module_spec(
                build_on_meta(lambda: MaskGCTS2A(S2AConfig.from_dict(_cfg("maskgct-s2a", role))))
            )
            spec["diff_estimator.embed_tokens.weight"] = ((0, 256), torch.float32)  # as released
            write_random(p, spec, gen)

        yield "maskgct-s2a", role, mg / s2a.files[role].path, write_s2a
    if "tts" in tasks:
        t2s = get_card("maskgct-t2s")
        yield (
            "maskgct-t2s",
            "stage1",
            mg / t2s.files["stage1"].path,
            (
                lambda p: write_random(
                    p,
                    module_spec(
                        build_on_meta(
                            lambda: MetisStage1(
                                Stage1Config.from_dict(_cfg("maskgct-t2s", "t2s_model"), "tts")
                            )
                        )
                    ),
                    gen,
                )
            ),
        )
    lora_cards = {"se": "metis-se-lora32", "tse": "metis-tse-lora32", "vc": "metis-vc-lora16"}
    wanted = [lora_cards[t] for t in tasks if t in lora_cards]
    if wanted:
        base_card = get_card("metis-base")
        base = build_on_meta(
            lambda: MetisStage1(Stage1Config.from_dict(_cfg("metis-base", "t2s_model"), None))
        )
        yield (
            "metis-base",
            "base",
            root / base_card.repo / base_card.files["base"].path,
            (lambda p: write_random(p, module_spec(base), gen)),
        )
        for name in wanted:
            card = get_card(name)
            block = _cfg(name, "t2s_model")
            full = build_on_meta(
                lambda b=block, c=card: MetisStage1(Stage1Config.from_dict(b, c.stage1["ft_type"]))
            )
            adapter = {f"model.{k}": v for k, v in module_spec(full).items() if k.startswith("cond_adapter.")}
            yield (
                name,
                "adapter",
                root / card.repo / card.files["adapter"].path,
                (lambda p, a=adapter: write_random(p, a, gen, rename=lambda key: key.removeprefix("model."))),
            )
            yield (
                name,
                "lora",
                root / card.repo / card.files["lora"].path,
                (
                    lambda p, r=block["lora_r"]: write_safetensors(
                        p, lora_spec(base, r), lambda key: lora_tensor(key, r, base, gen)
                    )
                ),
            )


def lora_spec(base: nn.Module, r: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Official LoRA-file keys and shapes for rank r (7 projections per layer)."""
    from metis_cli.assets.lora import expected_lora_shapes

    return {k: (s, torch.float32) for k, s in expected_lora_shapes(base, r).items()}


def lora_tensor(key: str, r: int, base: nn.Module, gen: torch.Generator) -> torch.Tensor:
    """A: N(0, 1/fan_in); B: small (0.5 N(0, 1/r)) so the merged weight stays well scaled."""
    path = key.removeprefix("model.").rsplit(".lora_", 1)[0]
    out_f, in_f = base.get_submodule(path).weight.shape
    if ".lora_A." in key:
        return torch.empty(r, in_f).normal_(generator=gen).mul_(1 / math.sqrt(in_f))
    return torch.empty(out_f, r).normal_(generator=gen).mul_(0.5 / math.sqrt(r) / math.sqrt(in_f))


def write_w2v_bert(directory: Path, gen: torch.Generator) -> None:
    """config.json, preprocessor_config.json and a random model.safetensors at the released size."""
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

    from metis_cli.testing.tiny_ssl import OFFICIAL_FEATURE_EXTRACTOR

    directory.mkdir(parents=True, exist_ok=True)
    config = Wav2Vec2BertConfig(**W2V_BERT_CONFIG)
    model = build_on_meta(lambda: Wav2Vec2BertModel(config))
    spec = module_spec(model)
    write_random(directory / "model.safetensors", spec, gen)
    config.save_pretrained(directory)
    SeamlessM4TFeatureExtractor(**OFFICIAL_FEATURE_EXTRACTOR).save_pretrained(directory)


def verify(root: Path, card: str, role: str, path: Path) -> None:
    """Check a written file against its manifest (raises CheckpointError)."""
    ModelStore(root, offline=True).verify(get_card(card), role, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="cache dir (default .bench_cache/)")
    parser.add_argument("--tasks", nargs="+", default=["se"], choices=["se", "tse", "vc", "tts"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = args.dir.resolve()
    for card, role, path, write in jobs_for(args.tasks, root):
        if path.is_file():
            try:
                verify(root, card, role, path)
                log.info("present  %s", path.relative_to(root))
                continue
            except CheckpointError as exc:
                log.warning("rewriting %s (%s)", path.relative_to(root), exc)
        t0 = time.perf_counter()
        write(path)
        verify(root, card, role, path)
        size = path.stat().st_size / 1e9
        log.info("wrote    %s (%.2f GB, %.1fs)", path.relative_to(root), size, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

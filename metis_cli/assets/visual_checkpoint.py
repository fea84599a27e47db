"""Load the Auto-AVSR visual encoder from a user-supplied `.pth` + `model.json` (L2S spec §2, §4).

The file is read with `torch.load(weights_only=True)` (plain tensor dicts only, never arbitrary
pickles). Accepted key namings, all mapped to `metis_cli.nn.visual` keys:

* VSR / ESPnet (`encoder.frontend...`, `encoder.embed.0...`, `encoder.encoders...`), with the
  old ESPnet renames `encoder.input_layer.` -> `encoder.embed.` and `encoder.norm.` ->
  `encoder.after_norm.`;
* auto_avsr 2025 (`frontend.`, `proj_encoder.`, `encoder.encoders.`, `encoder.after_norm.`);
* either one inside a `state_dict` / `model` wrapper dict, or behind a `model.` prefix.

The decoder and CTC tensors of the full E2E checkpoint (`decoder.`, `ctc.`) are ignored; any
other key, a missing encoder key or a wrong shape is a `CheckpointError` naming the file.
Missing `num_batches_tracked` counters are tolerated (they do not affect inference).
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from metis_cli.assets.checkpoint import build_on_meta, check_keys, load_state
from metis_cli.errors import CheckpointError, MissingModelError
from metis_cli.nn.visual import VisualEncoder, VisualEncoderConfig, tiny_config

log = logging.getLogger(__name__)

IGNORED_PREFIXES = ("decoder.", "ctc.")  # E2E parts that features do not need (spec §4.1)

MISSING_CHECKPOINT_HELP = (
    "the L2S visual encoder is not distributed by Amphion; download the Auto-AVSR model "
    "LRS3_V_WER19.1 (model.pth + model.json) from the model zoo of "
    "mpc001/Visual_Speech_Recognition_for_Multiple_Languages (non-commercial research licence) "
    "and pass it with --visual-checkpoint"
)


def read_visual_config(json_path: str | Path) -> VisualEncoderConfig:
    """Parse an ESPnet model.json: a dict of arguments, or the list form `[idim, odim, args]`."""
    json_path = Path(json_path)
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{json_path}: visual encoder config not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{json_path}: not a readable JSON config ({exc})") from None
    if isinstance(data, list) and len(data) == 3 and isinstance(data[2], dict):
        data = data[2]
    if not isinstance(data, dict):
        raise CheckpointError(f"{json_path}: expected a dict or an [idim, odim, args] list")
    try:
        cfg = VisualEncoderConfig.from_dict(data)
        cfg.check()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{json_path}: {exc}") from None
    return cfg


def _read_pth(path: Path) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True, unwrapped to a flat {key: tensor} dict.

    Files in the zip format are memory-mapped, so unused decoder/CTC tensors are never read.
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(2)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    mmap = zipfile.is_zipfile(path)
    if not head:
        raise CheckpointError(f"{path}: not a readable torch checkpoint (empty file)")
    if not mmap and head[:1] != b"\x80":  # neither torch.save's zip nor its legacy pickle
        raise CheckpointError(f"{path}: not a torch checkpoint (expected a .pth written by torch.save)")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the errors below say it
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        detail = re.search(r"Unsupported (global|operand)[^\n]*", str(exc))
        why = f" ({detail.group(0).split('. ')[0].strip()})" if detail else ""
        raise CheckpointError(
            f"{path}: not a plain tensor checkpoint; safe loading (weights_only) refuses it{why}"
        ) from None
    except EOFError:
        raise CheckpointError(f"{path}: not a readable torch checkpoint (empty or truncated)") from None
    except Exception as exc:  # noqa: BLE001 - corrupt data makes the unpickler fail in any way
        first = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({first})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {', '.join(bad[:5])}")
    return obj


def _to_vsr_keys(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map any accepted naming onto VSR names (`encoder.*`); decoder/ctc dropped, others kept."""
    if tensors and all(k.startswith("model.") for k in tensors):
        tensors = {k[len("model.") :]: v for k, v in tensors.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key.startswith(IGNORED_PREFIXES):
            continue
        if key.startswith("frontend."):  # auto_avsr 2025
            key = "encoder." + key
        elif key.startswith("proj_encoder."):
            key = "encoder.embed.0." + key[len("proj_encoder.") :]
        if key.startswith("encoder.input_layer."):  # old ESPnet names
            key = "encoder.embed." + key[len("encoder.input_layer.") :]
        elif key.startswith("encoder.norm."):
            key = "encoder.after_norm." + key[len("encoder.norm.") :]
        out[key] = value  # anything else stays as it is, so the strict check reports it
    return out


def load_visual_encoder(
    pth_path: str | Path,
    json_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> VisualEncoder:
    """Build the visual encoder from an Auto-AVSR checkpoint, in eval mode on `device`.

    `json_path` defaults to the `.json` next to the `.pth` (model.pth -> model.json); without
    one, the LRS3_V_WER19.1 options are used (auto_avsr checkpoints ship no json).
    """
    pth_path = Path(pth_path)
    if not pth_path.is_file():
        raise MissingModelError(f"{pth_path}: visual encoder checkpoint not found; {MISSING_CHECKPOINT_HELP}")
    if json_path is None and pth_path.with_suffix(".json").is_file():
        json_path = pth_path.with_suffix(".json")
    if json_path is not None:
        cfg = read_visual_config(json_path)
    else:
        log.info("%s: no model.json next to it; using the LRS3_V_WER19.1 encoder options", pth_path)
        cfg = VisualEncoderConfig()
    tensors = _to_vsr_keys(_read_pth(pth_path))
    model = build_on_meta(lambda: VisualEncoder(cfg))
    expected = {"encoder." + k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in tensors:
            tensors[key] = torch.zeros((), dtype=torch.long)
    check_keys(expected, {k: tuple(v.shape) for k, v in tensors.items()}, source=str(pth_path))
    state = {k[len("encoder.") :]: v for k, v in tensors.items()}
    load_state(model, state, source=str(pth_path), dtype=dtype, device=device)
    log.info("loaded visual encoder %s (%d layers, width %d)", pth_path, cfg.elayers, cfg.adim)
    return model.eval()


def save_tiny_visual_checkpoint(directory: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write a random tiny encoder as `model.pth` + `model.json` in the official formats.

    The `.pth` is a plain dict of tensors with ESPnet key names (`encoder.*`) plus a couple of
    decoder/CTC tensors, like the official E2E file; the json is the `[idim, odim, args]` list.
    Deterministic in `seed`; returns (pth_path, json_path).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config()
    gen = torch.Generator().manual_seed(seed)
    shapes = {k: tuple(v.shape) for k, v in build_on_meta(lambda: VisualEncoder(cfg)).state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        name = key.rsplit(".", 1)[-1]
        if name == "num_batches_tracked":
            value = torch.zeros((), dtype=torch.long)
        elif name == "running_var":
            value = 0.5 + torch.rand(shape, generator=gen)
        elif len(shape) == 1 and name == "weight":  # norm scales
            value = 1 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1 or name in ("running_mean", "pos_bias_u", "pos_bias_v"):
            value = 0.1 * torch.randn(shape, generator=gen)
        else:  # conv / linear weights, fan-in scaled
            value = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
        state["encoder." + key] = value
    vocab = 7
    state["decoder.embed.0.weight"] = torch.randn(vocab, cfg.adim, generator=gen)
    state["ctc.ctc_lo.weight"] = torch.randn(vocab, cfg.adim, generator=gen)
    state["ctc.ctc_lo.bias"] = torch.zeros(vocab)
    args = {
        "transformer_input_layer": cfg.transformer_input_layer,
        "adim": cfg.adim,
        "aheads": cfg.aheads,
        "eunits": cfg.eunits,
        "elayers": cfg.elayers,
        "transformer_encoder_attn_layer_type": cfg.transformer_encoder_attn_layer_type,
        "rel_pos_type": cfg.rel_pos_type,
        "macaron_style": int(cfg.macaron_style),
        "use_cnn_module": int(cfg.use_cnn_module),
        "cnn_module_kernel": cfg.cnn_module_kernel,
        "zero_triu": cfg.zero_triu,
        "relu_type": cfg.relu_type,
        "a_upsample_ratio": 1,
        "dropout_rate": 0.1,
        "transformer_attn_dropout_rate": 0.1,
        "dlayers": 1,
        "dunits": 2 * cfg.adim,
        "mtlalpha": 0.1,
        "frontend_width": cfg.frontend_width,  # our extension; the official network has 64
    }
    pth_path, json_path = directory / "model.pth", directory / "model.json"
    torch.save(state, pth_path)
    json_path.write_text(json.dumps([88 * 88, vocab, args], indent=2) + "\n", encoding="utf-8")
    return pth_path, json_path

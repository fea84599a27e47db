"""w2v-BERT 2.0 layer-17 features, normalised with the official stats (spec §2, §12).

The official pipeline runs all 24 conformer layers with ``output_hidden_states=True`` and keeps
``hidden_states[17]``, the output of the 17th conformer layer. The encoder applies nothing after
its last layer (no final norm; the model's optional intermediate FFN and adapter act on
``last_hidden_state`` only and are off in w2v-BERT 2.0), so running the feature projection and
only the first 17 layers gives exactly that tensor. The extra 7 layers are never loaded: the
transformers module is built from its config (layer count lowered) on the meta device and
takes the memory-mapped weights through the strict loader (``metis_cli.assets.checkpoint``).

The official transformers (4.41.2) encoder takes one scalar uniform draw per layer from the
global CPU generator on every forward; that is emulated separately by
:func:`official_hidden_draws`, and the forward here never touches any RNG.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load_file

from metis_cli.assets import checkpoint
from metis_cli.constants import SSL_LAYER, SSL_MIN_SAMPLES, SSL_NUM_LAYERS_OFFICIAL, SSL_SAMPLE_RATE
from metis_cli.errors import AudioError, CheckpointError, MissingModelError

log = logging.getLogger(__name__)

OFFICIAL_STATS_PATH = Path(__file__).resolve().parents[1] / "data" / "w2v_bert_stats.safetensors"
STATS_FILENAME = "metis_stats.safetensors"  # optional stats next to a (tiny) model
WEIGHTS_FILENAME = "model.safetensors"
FBANK_WIN = 400  # 25 ms at 16 kHz
FBANK_HOP = 160  # 10 ms at 16 kHz
FBANK_STRIDE = 2  # fbank frames stacked per SSL frame

AttnImpl = Literal["eager", "sdpa"]


def num_ssl_frames(n_samples: int) -> int:
    """SSL frames for ``n_samples`` at 16 kHz: ``ceil(n_fbank / 2)``, ``n_fbank = 1 + (n - 400) // 160``.

    Returns 0 for inputs shorter than 400 samples (no fbank frame).
    """
    if n_samples < FBANK_WIN:
        return 0
    n_fbank = 1 + (n_samples - FBANK_WIN) // FBANK_HOP
    return math.ceil(n_fbank / FBANK_STRIDE)


def official_hidden_draws(generator: torch.Generator, n: int = SSL_NUM_LAYERS_OFFICIAL) -> None:
    """Consume from ``generator`` exactly what ``n`` separate ``torch.rand([])`` calls consume.

    This reproduces the discarded layer-drop draws of one official w2v-BERT forward (spec §12)
    on the generator that the samplers use afterwards.
    """
    for _ in range(n):
        torch.rand([], generator=generator)


def load_stats(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``mean`` and ``var`` float32 ``(hidden,)`` tensors from a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: SSL stats file not found")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{path}: unreadable SSL stats file ({type(exc).__name__})") from None
    if set(tensors) != {"mean", "var"}:
        raise CheckpointError(
            f"{path}: SSL stats must hold exactly 'mean' and 'var', found {sorted(tensors)}"
        )
    mean, var = tensors["mean"].float(), tensors["var"].float()
    if mean.ndim != 1 or mean.shape != var.shape:
        raise CheckpointError(
            f"{path}: SSL stats 'mean' {tuple(mean.shape)} and 'var' {tuple(var.shape)} must be equal (H,)"
        )
    return mean, var


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# keys of a w2v-BERT file that the truncated encoder does not use: the discarded layers, and the
# adapter / intermediate FFN that act only on last_hidden_state
_UNUSED_KEY = re.compile(r"^(?:encoder\.layers\.\d+|adapter|intermediate_ffn)\.")
_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.")

TensorSource = Callable[[Path, dict[str, tuple[int, ...]], list[str]], Mapping[str, torch.Tensor]]


class SSLFeatureExtractor:
    """16 kHz waveform -> normalised w2v-BERT 2.0 layer-17 features ``(1, T, hidden)`` float32.

    Args:
        model_dir: a local ``facebook/w2v-bert-2.0`` snapshot (``config.json``, weights and
            ``preprocessor_config.json``), loaded with ``from_pretrained``.
        stats: ``(mean, var)`` of shape ``(hidden,)``; default the shipped official stats.
        attn_impl: ``"eager"`` (exact mode, bit-identical to transformers 4.41.2) or ``"sdpa"``.
        device: where the encoder runs.
        dtype: encoder dtype; ``torch.bfloat16`` is an opt-in fast mode (normalisation stays fp32).
        num_layers: conformer layers to run (the feature is the output of the last one).
        tensor_source: ``(weights_path, expected {key: shape}, tolerated unused keys) -> tensors``
            instead of reading the file directly (the engine's bf16 cache); the result is still
            loaded strictly.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        stats: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_impl: AttnImpl = "eager",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        num_layers: int = SSL_LAYER,
        tensor_source: TensorSource | None = None,
    ):
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise MissingModelError(f"{self.model_dir}: no w2v-BERT model here (config.json missing)")
        if attn_impl not in ("eager", "sdpa"):
            raise ValueError(f"attn_impl must be 'eager' or 'sdpa', got {attn_impl!r}")
        self.attn_impl = attn_impl
        self.device = torch.device(device)
        self.dtype = dtype
        self.num_layers = num_layers
        self.tensor_source = tensor_source
        mean, var = stats if stats is not None else load_stats(OFFICIAL_STATS_PATH)
        self.mean = mean.detach().to(torch.float32).cpu()
        self.std = torch.sqrt(var.detach().to(torch.float32).cpu())
        self._extractor = None
        self._model = None
        self.load()

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike, **kwargs) -> SSLFeatureExtractor:
        """Like the constructor, but use ``metis_stats.safetensors`` in ``model_dir`` if present."""
        stats_path = Path(model_dir) / STATS_FILENAME
        if "stats" not in kwargs and stats_path.is_file():
            kwargs["stats"] = load_stats(stats_path)
        return cls(model_dir, **kwargs)

    @property
    def hidden_size(self) -> int:
        return int(self.mean.shape[0])

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load the feature extractor and the encoder cut after ``num_layers`` (no-op when loaded).

        The encoder is built from its config (layer count lowered) on the meta device and takes
        the memory-mapped tensors of ``model.safetensors`` through the strict loader: every
        weight of the kept layers is required with its shape; the discarded layers' weights
        (and those of the unused adapter / intermediate FFN, when the config has them) are the
        only tolerated extras, and they are never read.
        """
        if self._model is not None:
            return
        from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

        where = str(self.model_dir)
        try:
            config = Wav2Vec2BertConfig.from_pretrained(where)
            extractor = SeamlessM4TFeatureExtractor.from_pretrained(where)
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"{self.model_dir}: cannot read w2v-BERT config ({_first_line(exc)})"
            ) from None
        n_total = config.num_hidden_layers
        if n_total < self.num_layers:
            raise CheckpointError(
                f"{self.model_dir}: w2v-BERT has {n_total} layers, layer {self.num_layers} is needed"
            )
        if config.hidden_size != self.hidden_size:
            raise CheckpointError(
                f"{self.model_dir}: hidden size {config.hidden_size} does not match "
                f"the SSL stats ({self.hidden_size})"
            )
        weights = self.model_dir / WEIGHTS_FILENAME
        if not weights.is_file():
            raise MissingModelError(f"{weights}: w2v-BERT weights not found")
        found = checkpoint.read_header(weights)
        config.num_hidden_layers = self.num_layers
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            # (one parameter is created with a legacy constructor that draws on the CPU RNG)
            model = Wav2Vec2BertModel._from_config(config, attn_implementation=self.attn_impl)
        # The encoder applies nothing after its last layer; the model's intermediate FFN and
        # adapter would act on last_hidden_state only (both off in w2v-BERT 2.0) and are unused.
        model.adapter = None
        model.intermediate_ffn = None
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        unused = [k for k in found if k not in expected and _UNUSED_KEY.match(k)]
        unused = [k for k in unused if not k.startswith("encoder.") or self._dropped_layer(k)]
        source = str(weights)
        if self.tensor_source is None:
            tensors = checkpoint.read_tensors(weights)
        else:
            tensors = self.tensor_source(weights, expected, unused)
        checkpoint.load_state(
            model,
            tensors,
            source=source,
            tolerated_extra=unused,
            dtype=self.dtype,
            device=self.device,
        )
        model.eval().requires_grad_(False)
        self._model = model
        self._extractor = extractor
        log.debug(
            "w2v-BERT loaded from %s: %d of %d layers, %s attention",
            self.model_dir,
            self.num_layers,
            n_total,
            self.attn_impl,
        )

    def _dropped_layer(self, key: str) -> bool:
        m = _LAYER_KEY.match(key)
        return m is not None and int(m.group(1)) >= self.num_layers

    def unload(self) -> None:
        """Drop the encoder (frees its memory); the next call reloads it."""
        self._model = None
        self._extractor = None

    def fbank(self, wav16k: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Transformers feature extractor: ``input_features (1, T, 160)``, ``attention_mask (1, T)``."""
        self.load()
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            # A single fbank frame (400..559 samples) has no variance: the extractor yields NaN
            # features for it, exactly as in the official run. That frame is masked, so the
            # encoder zeroes it; only silence the numpy warnings about it.
            warnings.simplefilter("ignore", RuntimeWarning)
            out = self._extractor(wav16k, sampling_rate=SSL_SAMPLE_RATE, return_tensors="pt")
        return out["input_features"], out["attention_mask"]

    @torch.no_grad()  # not inference_mode: the features may feed a model being trained
    def encode(self, input_features: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Truncated encoder: stacked fbanks ``(1, T, 160)`` -> layer output ``(1, T, hidden)`` float32.

        Un-normalised; equals the full model's ``hidden_states[num_layers]``. Leaves every RNG as it was.
        """
        self.load()
        model = self._model
        feats = input_features.to(device=self.device, dtype=self.dtype)
        mask = attention_mask.to(device=self.device)
        # The CPU generator is the one the official encoder drew from; in eval mode nothing
        # here draws on an accelerator.
        with torch.random.fork_rng(devices=[]):
            hidden, _ = model.feature_projection(feats)
            hidden = model.encoder(hidden, attention_mask=mask).last_hidden_state
        return hidden.float()

    def __call__(self, wav16k: np.ndarray, name: str = "<waveform>") -> torch.Tensor:
        """Normalised layer-17 features of a mono 16 kHz waveform.

        Args:
            wav16k: ``(N,)`` float32 samples at 16 kHz, ``N >= 400``.
            name: how to name the input in error messages (e.g. the source file).

        Returns:
            ``(1, T, hidden)`` float32 on ``self.device``, ``T = num_ssl_frames(N)``,
            ``(h - mean) / sqrt(var)`` per channel.
        """
        wav = np.asarray(wav16k, dtype=np.float32)
        if wav.ndim != 1:
            raise AudioError(f"{name}: expected a mono (N,) 16 kHz waveform, got shape {tuple(wav.shape)}")
        if wav.shape[0] < SSL_MIN_SAMPLES:
            raise AudioError(
                f"{name}: too short for SSL features ({wav.shape[0]} samples at 16 kHz, "
                f"need at least {SSL_MIN_SAMPLES} = 25 ms)"
            )
        if not np.isfinite(wav).all():
            raise AudioError(f"{name}: waveform contains non-finite samples")
        input_features, attention_mask = self.fbank(wav)
        hidden = self.encode(input_features, attention_mask)
        mean = self.mean.to(hidden.device)
        std = self.std.to(hidden.device)
        return (hidden - mean) / std

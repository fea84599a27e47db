"""The model loader: cards, strict loading, the bf16 cache, devices and which models stay resident.

`ModelLoader.component(name)` returns a loaded, eval-mode module (loading it on first use);
`enter(stage)` applies the residency policy before a stage runs. Every component has one
builder method, registered by name in `_BUILDERS` (no lookup by string formatting).

Residency (`low_memory`): the reference mode keeps every model resident. With `low_memory`,
entering a stage frees the *large* models the stage does not use (w2v-BERT, stage 1, the two
S2A models) and keeps the small codecs, so the peak is one large model plus the codecs; what
the next batch needs first (the condition models) is loaded only when it starts.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metis_cli.assets import checkpoint, weight_cache
from metis_cli.assets.cards import DEFAULT_MODEL, ModelCard, ModelStore, get_card
from metis_cli.constants import SSL_LAYER
from metis_cli.core.devices import DTYPES, apply_precision, resolve_device
from metis_cli.core.prompt_cache import PromptCache
from metis_cli.core.tasks import TASKS, TaskSpec
from metis_cli.core.tokenizer import Tokenizers
from metis_cli.errors import InputError, MissingModelError, UsageError
from metis_cli.options import EngineOptions

log = logging.getLogger(__name__)

# components each stage uses
STAGE_COMPONENTS: dict[str, tuple[str, ...]] = {
    "conditions": ("ssl", "semantic_codec", "acoustic_encoder", "acoustic_decoder", "visual"),
    "stage1": ("stage1",),
    "s2a": ("s2a_1layer", "s2a_full"),
    "decode": ("acoustic_decoder",),
}
LARGE_COMPONENTS = ("ssl", "stage1", "s2a_1layer", "s2a_full", "visual")


@dataclass
class StageStats:
    """Accumulated wall and CPU seconds per stage, model load times, transformer passes."""

    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    load: dict[str, float] = field(default_factory=dict)
    passes: dict[str, int] = field(default_factory=dict)

    def add(self, stage: str, wall: float, cpu: float) -> None:
        self.wall[stage] = self.wall.get(stage, 0.0) + wall
        self.cpu[stage] = self.cpu.get(stage, 0.0) + cpu


class ModelLoader:
    """Loads the components of one task's model card on `options.device` in `options.dtype`."""

    def __init__(
        self,
        task: str,
        model: str | None = None,
        store: ModelStore | None = None,
        options: EngineOptions | None = None,
    ) -> None:
        if task not in TASKS:
            raise UsageError(f"unknown task '{task}' (known: {', '.join(TASKS)})")
        self.task = task
        self.spec: TaskSpec = TASKS[task]
        self.card: ModelCard = get_card(model or DEFAULT_MODEL[task])
        if task not in self.card.tasks:
            raise InputError(
                f"model '{self.card.name}' does not do task '{task}' (it does: {self.card.tasks})"
            )
        self.store = store or ModelStore()
        self.options = options or EngineOptions()
        self.device = resolve_device(self.options.device)
        if self.options.dtype not in DTYPES:
            raise InputError(f"unknown dtype '{self.options.dtype}' (float32, bfloat16 or float16)")
        self.dtype = DTYPES[self.options.dtype]
        if self.dtype == torch.float16 and self.device.type == "cpu":
            raise InputError("--dtype: float16 is for GPUs; use bfloat16 on CPU")
        apply_precision(self.device, self.dtype, allow_tf32=self.options.allow_tf32)
        self.bf16_cache = (
            self.dtype == torch.bfloat16 and self.options.bf16_cache and weight_cache.env_enabled()
        )
        self.stats = StageStats()
        self._components: dict[str, Any] = {}
        # the tokenizers hold weak references back to the loader: no reference cycle, so a dropped
        # pipeline frees its (GPU) weights at once, without waiting for gc.collect()
        get = weakref.WeakMethod(self.component)
        feats = weakref.WeakMethod(self._visual_features)
        self.tokenizers = Tokenizers(lambda name: get()(name), self.device, visual=lambda *a: feats()(*a))
        self.tokenizers.prompt_cache = PromptCache()  # one prompt, encoded once per run
        where = hashlib.sha256(str(self.store.checkpoint_dir).encode()).hexdigest()[:8]  # which weights
        self.tokenizers.cache_scope = f"{self.card.name}-{self.options.dtype}-{self.device}-{where}"

    # -- components -----------------------------------------------------------------------------
    def component(self, name: str) -> Any:
        """A resident component, loading it on first use."""
        if name not in self._components:
            builder = BUILDERS.get(name)
            if builder is None:
                raise KeyError(f"unknown component {name!r}")
            t0 = time.perf_counter()
            self._components[name] = builder(self)
            dt = time.perf_counter() - t0
            self.stats.load[name] = self.stats.load.get(name, 0.0) + dt
            log.debug("loaded %s in %.2fs", name, dt)
        return self._components[name]

    @property
    def resident(self) -> set[str]:
        return set(self._components)

    def release(self, *names: str) -> None:
        """Free components (they reload on next use)."""
        freed = [n for n in names if self._components.pop(n, None) is not None]
        if freed:
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def enter(self, stage: str) -> None:
        """Residency policy before `stage` runs (module docstring)."""
        if self.options.low_memory:
            keep = STAGE_COMPONENTS[stage]
            self.release(*(n for n in LARGE_COMPONENTS if n not in keep))

    def needed_components(self) -> list[str]:
        names = ["ssl", "semantic_codec"] if self.task != "l2s" else ["semantic_codec", "ssl"]
        if self.spec.needs_acoustic_encoder:
            names.append("acoustic_encoder")
        if self.spec.needs_visual:
            names.append("visual")
        return names + ["stage1", "s2a_1layer", "s2a_full", "acoustic_decoder"]

    def load_all(self) -> None:
        """Load every component this task needs (else they load lazily)."""
        for n in self.needed_components():
            self.component(n)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -- builders ---------------------------------------------------------------------------------
    def _file(self, card_name: str, role: str) -> Path:
        card = get_card(card_name) if card_name != self.card.name else self.card
        path = self.store.path(card, role, hint=self.card.name)
        self.store.verify(card, role, path)
        return path

    def _weights(
        self, path: Path, expected: dict[str, tuple[int, ...]], tolerated: Iterable[str] = ()
    ) -> Any:
        """The tensors of `path` for a module with the `expected` layout: the file itself, or in
        bf16 its cached bf16 copy (built and written on the first load; `weight_cache`)."""
        if not self.bf16_cache:
            return checkpoint.read_tensors(path)
        tolerated = sorted(tolerated)

        def build() -> dict[str, torch.Tensor]:
            src = checkpoint.read_tensors(path)
            found = {k: tuple(v.shape) for k, v in src.items()}
            checkpoint.check_keys(expected, found, source=str(path), tolerated_extra=tolerated)
            return {k: src[k] for k in expected}

        layout = hashlib.sha256(json.dumps(sorted(expected.items())).encode()).hexdigest()[:16]
        return weight_cache.cached_tensors(
            [path], kind="file", dtype=self.dtype, expected=expected, build=build, params={"layout": layout}
        )

    def _load_module(
        self, module: torch.nn.Module, path: Path, tolerated: Iterable[str] = ()
    ) -> torch.nn.Module:
        tolerated = list(tolerated)
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        checkpoint.load_state(
            module,
            self._weights(path, expected, tolerated),
            source=str(path),
            tolerated_extra=tolerated,
            dtype=self.dtype,
            device=self.device,
        )
        return module.eval()

    def _load_ssl(self) -> Any:
        from metis_cli.core.ssl import SSLFeatureExtractor

        card = get_card("w2v-bert-2.0")
        model_dir = self._file("w2v-bert-2.0", "weights").parent
        for role in ("config", "preprocessor"):
            self._file("w2v-bert-2.0", role)
        return SSLFeatureExtractor.from_dir(
            model_dir,
            num_layers=self.store.config(card).get("layer", SSL_LAYER),
            device=self.device,
            dtype=self.dtype,
            attn_impl=self.options.attention,
            tensor_source=self._weights if self.bf16_cache else None,
        )

    def _load_semantic_codec(self) -> Any:
        from metis_cli.nn.semantic_codec import SemanticCodec, SemanticCodecConfig

        cfg = SemanticCodecConfig.from_dict(self.store.config(get_card("maskgct-codecs"))["semantic_codec"])
        module = checkpoint.build_on_meta(lambda: SemanticCodec(cfg))
        return self._load_module(module, self._file("maskgct-codecs", "semantic_codec"))

    def _codec_cfg(self) -> Any:
        from metis_cli.nn.acoustic_codec import AcousticCodecConfig

        return AcousticCodecConfig.from_dict(self.store.config(get_card("maskgct-codecs"))["acoustic_codec"])

    def _load_acoustic_encoder(self) -> Any:
        from metis_cli.nn.acoustic_codec import CodecEncoder

        cfg = self._codec_cfg()
        module = checkpoint.build_on_meta(lambda: CodecEncoder(cfg.encoder))
        return self._load_module(module, self._file("maskgct-codecs", "acoustic_encoder"))

    def _load_acoustic_decoder(self) -> Any:
        from metis_cli.nn.acoustic_codec import CodecDecoder, check_istft_window

        cfg = self._codec_cfg()
        path = self._file("maskgct-codecs", "acoustic_decoder")
        module = self._load_module(checkpoint.build_on_meta(lambda: CodecDecoder(cfg.decoder)), path)
        check_istft_window(module, str(path))
        return module

    def _load_stage1(self) -> Any:
        from metis_cli.nn.stage1 import MetisStage1, Stage1Config

        card = self.card
        block = self.store.config(card)["t2s_model"]
        ft_type = card.stage1.get("ft_type")
        if card.stage1.get("layout", "full") == "lora":
            return self._load_lora_stage1(block, ft_type)
        cfg = Stage1Config.from_dict(block, ft_type)
        module = checkpoint.build_on_meta(lambda: MetisStage1(cfg, attn_impl=self.options.attention))
        return self._load_module(module, self._file(card.name, "stage1"))

    def _load_lora_stage1(self, block: dict, ft_type: str | None) -> Any:
        from metis_cli.assets.lora import assemble_lora_stage1, lora_stage1_config
        from metis_cli.nn.stage1 import MetisStage1, Stage1Config

        card = self.card
        paths = {role: self._file(card.name, role) for role in ("base", "adapter", "lora")}
        sources = (str(paths["base"]), str(paths["adapter"]), str(paths["lora"]))
        r, alpha = block["lora_r"], block["lora_alpha"]

        def assemble(device: torch.device | None) -> MetisStage1:
            return assemble_lora_stage1(
                Stage1Config.from_dict(block, ft_type),
                checkpoint.read_tensors(paths["base"]),
                checkpoint.read_tensors(paths["adapter"]),
                checkpoint.read_tensors(paths["lora"]),
                r=r,
                alpha=alpha,
                sources=sources,
                device=device,
                dtype=self.dtype,
            )

        if not self.bf16_cache:
            model = assemble(self.device)
            model.diff_estimator.attn_impl = self.options.attention
            return model.eval()
        # bf16: the merged model is cached (merge in float32, cast, write once)
        cfg = lora_stage1_config(Stage1Config.from_dict(block, ft_type), sources[2])
        model = checkpoint.build_on_meta(lambda: MetisStage1(cfg, attn_impl=self.options.attention))
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        tensors = weight_cache.cached_tensors(
            list(paths.values()),
            kind="lora-merged-stage1",
            dtype=self.dtype,
            expected=expected,
            build=lambda: assemble(None).state_dict(),
            params={"r": r, "alpha": alpha},
        )
        checkpoint.load_state(model, tensors, source=f"{sources[0]} + LoRA (bf16 cache)", device=self.device)
        return model.eval()

    def _load_s2a(self, role: str) -> Any:
        from metis_cli.nn.s2a import MaskGCTS2A, S2AConfig

        cfg = S2AConfig.from_dict(self.store.config(get_card("maskgct-s2a"))[role])
        module = checkpoint.build_on_meta(lambda: MaskGCTS2A(cfg, attn_impl=self.options.attention))
        return self._load_module(
            module, self._file("maskgct-s2a", role), tolerated=["diff_estimator.embed_tokens.weight"]
        )

    def _load_s2a_1layer(self) -> Any:
        return self._load_s2a("s2a_1layer")

    def _load_s2a_full(self) -> Any:
        return self._load_s2a("s2a_full")

    def _load_visual(self) -> Any:
        from metis_cli.assets.visual_checkpoint import load_visual_encoder

        path = self.options.visual_checkpoint
        if path is None:
            note = self.card.extra.get("visual_encoder", {}).get("note", "")
            raise MissingModelError(
                f"L2S needs the visual encoder checkpoint: pass --visual-checkpoint. {note}"
            )
        return load_visual_encoder(Path(path), device=self.device, dtype=self.dtype)

    def _visual_features(self, path: Path, landmarks: Path | None = None) -> torch.Tensor:
        """(T25, D) visual-encoder features of a video (mouth crops resampled to 25 fps)."""
        from metis_cli.media.video import load_mouth_rois, visual_features

        encoder = self.component("visual")
        rois = load_mouth_rois(path, landmarks=landmarks, face_model=self.options.face_model)
        return visual_features(encoder, rois)


# component name -> builder (plain functions: a dict of bound methods would make a reference cycle)
BUILDERS: dict[str, Callable[[ModelLoader], Any]] = {
    "ssl": ModelLoader._load_ssl,
    "semantic_codec": ModelLoader._load_semantic_codec,
    "acoustic_encoder": ModelLoader._load_acoustic_encoder,
    "acoustic_decoder": ModelLoader._load_acoustic_decoder,
    "stage1": ModelLoader._load_stage1,
    "s2a_1layer": ModelLoader._load_s2a_1layer,
    "s2a_full": ModelLoader._load_s2a_full,
    "visual": ModelLoader._load_visual,
}

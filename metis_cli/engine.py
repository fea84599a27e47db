"""The engine: owns devices, dtypes, which components are resident, batching and progress.

Data flow per batch of jobs (spec §1.1): task conditions (audio → SSL features / semantic and
acoustic prompt codes, or phones) → stage 1 (semantic tokens) → S2A 1-layer → S2A full →
acoustic decoder → 24 kHz waveform. Every job owns a `torch.Generator` seeded with its seed;
on CPU it first gives out the official pipeline's hidden SSL draws (spec §12), so a batch-1
fp32 run reproduces a seeded official run token for token.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint, weight_cache
from .cards import ModelCard, ModelStore, get_card
from .constants import SSL_LAYER, SSL_NUM_LAYERS_OFFICIAL
from .errors import CheckpointError, InputError, MetisError, MissingModelError
from .tasks import TASKS, Conditions, Job, TaskSpec
from .tokenizer import Tokenizers

log = logging.getLogger(__name__)

# Errors about the models themselves end the run (every job would fail the same way);
# any other MetisError fails only the job that raised it.
FATAL = (MissingModelError, CheckpointError)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class EngineOptions:
    """How to run (not what to compute). Defaults are the exact reference mode."""

    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N" | "mps"
    dtype: str = "float32"  # "float32" (reference) | "bfloat16" (fast) | "float16" (GPU only)
    attention: str = "eager"  # "eager" (reference) | "sdpa" (fast mode: fused attention kernels)
    fused_cfg: bool = False  # fast mode: conditional + unconditional CFG passes in one forward
    batch_size: int = 1  # jobs per padded batch (per-item tokens equal batch size 1)
    low_memory: bool = False  # free each stage's models once the batch no longer needs them
    # bf16: keep converted (and LoRA-merged) weights in $METIS_CACHE_DIR/bf16 and memory-map them
    # on later loads (also off with METIS_BF16_CACHE=0); see metis_cli/weight_cache.py
    bf16_cache: bool = True
    visual_checkpoint: Path | None = None  # L2S: Auto-AVSR model.pth (model.json beside it)
    # long inputs (docs/LONGFORM.md): SE/TSE/VC inputs longer than chunk_seconds are chunked
    chunk_seconds: float = 20.0  # longest chunk incl. overlaps (3-30 s; 0 = never chunk)
    overlap_seconds: float = 1.0  # equal-power crossfade at each join
    context_seconds: float = 2.0  # SE: previous chunk's output tokens carried as prompt (0 = off)
    max_chars: int = 300  # TTS: texts longer than this are split at sentence boundaries


@dataclass(frozen=True)
class Decoding:
    """Decoding settings (spec §1.5); defaults come from the model card."""

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
    def from_card(cls, card: ModelCard, task: str, **overrides: Any) -> Decoding:
        d = card.decoding_for(task)
        if not d:
            raise InputError(f"model '{card.name}' has no decoding settings for task '{task}'")
        s2a = d.get("s2a", {})
        base = cls(
            steps=d["steps"],
            cfg=d["cfg"],
            rescale_cfg=d.get("rescale_cfg", 0.75),
            temperature=d.get("temperature", 0.9),
            filter_thres=d.get("filter_thres", 0.98),
            s2a_steps_1layer=tuple(s2a.get("steps_1layer", (40,))),
            s2a_steps_full=tuple(s2a.get("steps_full", cls.s2a_steps_full)),
            s2a_cfg_1layer=s2a.get("cfg_1layer", 0.0),
            s2a_cfg_full=s2a.get("cfg_full", 2.5),
            s2a_temperature=s2a.get("temperature", 1.5),
            s2a_filter_thres=s2a.get("filter_thres", 0.98),
            s2a_rescale_cfg=s2a.get("rescale_cfg", 0.75),
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class JobResult:
    job: Job
    wav: np.ndarray | None  # (N,) float32 at 24 kHz, None on failure
    error: str | None = None  # one-line message on failure
    seconds: float = 0.0  # processing time attributed to this job
    audio_seconds: float = 0.0  # duration of the main input
    info: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


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


class _Timer:
    def __init__(self, stats: StageStats, stage: str, sync: Callable[[], None]) -> None:
        self.stats, self.stage, self.sync = stats, stage, sync

    def __enter__(self) -> _Timer:
        self.sync()
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sync()
        self.stats.add(self.stage, time.perf_counter() - self.w0, time.process_time() - self.c0)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device '{name}' requested but CUDA is not available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("device 'mps' requested but MPS is not available")
    return dev


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Engine:
    """Runs one task with one model card. Components load on first use, once."""

    def __init__(
        self,
        task: str,
        model: str | None = None,
        store: ModelStore | None = None,
        options: EngineOptions | None = None,
    ) -> None:
        from .cards import DEFAULT_MODEL

        if task not in TASKS:
            raise InputError(f"unknown task '{task}' (known: {', '.join(TASKS)})")
        self.task: str = task
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
            raise InputError("float16 is for GPUs; use --dtype bfloat16 on CPU")
        self.longform_options()  # bad chunking options are usage errors, raised before any work
        self.bf16_cache = (
            self.dtype == torch.bfloat16 and self.options.bf16_cache and weight_cache.env_enabled()
        )
        self.stats = StageStats()
        self.on_chunk: Callable[[Any], None] | None = None  # long jobs: called per finished chunk
        self._components: dict[str, Any] = {}
        self.tokenizers = Tokenizers(self.component, self.device, visual=self._visual_features)

    # -- components -----------------------------------------------------------------------------
    def _card(self, name: str) -> ModelCard:
        return get_card(name)

    def component(self, name: str) -> Any:
        """A resident component, loading it on first use."""
        if name not in self._components:
            t0 = time.perf_counter()
            self._components[name] = getattr(self, f"_load_{name}")()
            self.stats.load[name] = self.stats.load.get(name, 0.0) + time.perf_counter() - t0
            log.debug("loaded %s in %.2fs", name, time.perf_counter() - t0)
        return self._components[name]

    def release(self, *names: str) -> None:
        """Free components (they reload on next use)."""
        for n in names:
            self._components.pop(n, None)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

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

    def _file(self, card_name: str, role: str) -> Path:
        card = self._card(card_name) if card_name != self.card.name else self.card
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
        from .ssl import SSLFeatureExtractor

        card = self._card("w2v-bert-2.0")
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
        from .nn.semantic_codec import SemanticCodec, SemanticCodecConfig

        cfg = SemanticCodecConfig.from_dict(self.store.config(self._card("maskgct-codecs"))["semantic_codec"])
        module = checkpoint.build_on_meta(lambda: SemanticCodec(cfg))
        return self._load_module(module, self._file("maskgct-codecs", "semantic_codec"))

    def _codec_cfg(self) -> Any:
        from .nn.acoustic_codec import AcousticCodecConfig

        return AcousticCodecConfig.from_dict(
            self.store.config(self._card("maskgct-codecs"))["acoustic_codec"]
        )

    def _load_acoustic_encoder(self) -> Any:
        from .nn.acoustic_codec import CodecEncoder

        cfg = self._codec_cfg()
        module = checkpoint.build_on_meta(lambda: CodecEncoder(cfg.encoder))
        return self._load_module(module, self._file("maskgct-codecs", "acoustic_encoder"))

    def _load_acoustic_decoder(self) -> Any:
        from .nn.acoustic_codec import CodecDecoder, check_istft_window

        cfg = self._codec_cfg()
        path = self._file("maskgct-codecs", "acoustic_decoder")
        module = self._load_module(checkpoint.build_on_meta(lambda: CodecDecoder(cfg.decoder)), path)
        check_istft_window(module, str(path))
        return module

    def _load_stage1(self) -> Any:
        from .nn.stage1 import MetisStage1, Stage1Config

        card = self.card
        block = self.store.config(card)["t2s_model"]
        ft_type = card.stage1.get("ft_type")
        layout = card.stage1.get("layout", "full")
        if layout == "lora":
            from .lora import assemble_lora_stage1, lora_stage1_config

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
            source = f"{sources[0]} + LoRA (bf16 cache)"
            checkpoint.load_state(model, tensors, source=source, device=self.device)
            return model.eval()
        cfg = Stage1Config.from_dict(block, ft_type)
        module = checkpoint.build_on_meta(lambda: MetisStage1(cfg, attn_impl=self.options.attention))
        return self._load_module(module, self._file(card.name, "stage1"))

    def _load_s2a(self, role: str) -> Any:
        from .nn.s2a import MaskGCTS2A, S2AConfig

        cfg = S2AConfig.from_dict(self.store.config(self._card("maskgct-s2a"))[role])
        module = checkpoint.build_on_meta(lambda: MaskGCTS2A(cfg, attn_impl=self.options.attention))
        return self._load_module(
            module, self._file("maskgct-s2a", role), tolerated=["diff_estimator.embed_tokens.weight"]
        )

    def _load_s2a_1layer(self) -> Any:
        return self._load_s2a("s2a_1layer")

    def _load_s2a_full(self) -> Any:
        return self._load_s2a("s2a_full")

    def _load_visual(self) -> Any:
        from .errors import MissingModelError
        from .visual_loader import load_visual_encoder

        path = self.options.visual_checkpoint
        if path is None:
            note = self.card.extra.get("visual_encoder", {}).get("note", "")
            raise MissingModelError(
                f"L2S needs the visual encoder checkpoint: pass --visual-checkpoint. {note}"
            )
        return load_visual_encoder(Path(path), device=self.device, dtype=self.dtype)

    def _visual_features(self, path: Path, landmarks: Path | None = None) -> torch.Tensor:
        """(T25, D) visual-encoder features of a video (mouth crops resampled to 25 fps)."""
        from .video import load_mouth_rois, visual_features

        encoder = self.component("visual")
        rois = load_mouth_rois(path, landmarks=landmarks)
        return visual_features(encoder, rois)

    # -- running ----------------------------------------------------------------------------------
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _timer(self, stage: str) -> _Timer:
        return _Timer(self.stats, stage, self._sync)

    def _generator(self, job: Job, conds: Conditions) -> torch.Generator:
        """The job's own generator, advanced past the official hidden SSL draws on CPU."""
        gen = torch.Generator(device=self.device).manual_seed(job.seed)
        if self.device.type == "cpu":
            from .ssl import official_hidden_draws

            for _ in range(conds.ssl_forwards):
                official_hidden_draws(gen, SSL_NUM_LAYERS_OFFICIAL)
        return gen

    def conditions(self, job: Job) -> Conditions:
        with self._timer("conditions"):
            return self.spec.build(job, self.tokenizers)

    def run(
        self,
        jobs: Iterable[Job],
        decoding: Decoding,
        stream: bool = False,
    ) -> Iterator[JobResult]:
        """Process jobs in batches of `options.batch_size`; yields one result per job, in order.

        Inputs longer than one chunk go through `run_long` (see there for `stream`).
        """
        batch: list[Job] = []
        for job in jobs:
            if self.is_long(job):
                if batch:
                    yield from self._run_batch(batch, decoding)
                    batch = []
                yield self.run_long(job, decoding, stream=stream)
                continue
            batch.append(job)
            if len(batch) >= self.options.batch_size:
                yield from self._run_batch(batch, decoding)
                batch = []
        if batch:
            yield from self._run_batch(batch, decoding)

    def _run_batch(self, jobs: list[Job], decoding: Decoding) -> Iterator[JobResult]:
        t_start = time.perf_counter()
        ready: list[tuple[Job, Conditions]] = []
        failed: dict[int, JobResult] = {}
        for i, job in enumerate(jobs):
            try:
                ready.append((job, self.conditions(job)))
            except FATAL:
                raise
            except MetisError as exc:
                failed[i] = JobResult(job, None, error=str(exc))
        if self.options.low_memory:
            self.release("ssl", "semantic_codec", "acoustic_encoder", "visual")
        results: list[JobResult] = []
        if ready:
            try:
                results = self._generate(ready, decoding)
            except FATAL:
                raise
            except MetisError as exc:
                results = [JobResult(job, None, error=str(exc)) for job, _ in ready]
        per_job = (time.perf_counter() - t_start) / max(len(jobs), 1)
        it = iter(results)
        for i in range(len(jobs)):
            res = failed.get(i) or next(it)
            res.seconds = per_job
            yield res

    def _generate(self, ready: list[tuple[Job, Conditions]], decoding: Decoding) -> list[JobResult]:
        semantic, codes = self._generate_codes(ready, decoding)
        out = []
        with self._timer("decode"):
            for (job, c), code, sem in zip(ready, codes, semantic, strict=True):
                wav = self.tokenizers.decode(code)
                info = {"semantic_frames": int(sem.shape[0]), "acoustic_frames": int(code.shape[0]), **c.info}
                out.append(JobResult(job, wav, audio_seconds=c.audio_seconds, info=info))
        return out

    def _generate_codes(
        self, ready: list[tuple[Job, Conditions]], decoding: Decoding
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Stage 1 + S2A: per item the generated semantic codes (L,) and acoustic codes (L_ac, 12)."""
        from .sampling import DecodeOptions, TorchNoise, metis_semantic_to_acoustic, stage1_generate

        gens = [self._generator(job, c) for job, c in ready]
        noise = [TorchNoise(g) for g in gens]
        stage1 = self.component("stage1")
        opts1 = DecodeOptions(
            steps=decoding.steps,
            cfg=decoding.cfg,
            rescale_cfg=decoding.rescale_cfg,
            temperature=decoding.temperature,
            filter_thres=decoding.filter_thres,
            fused_cfg=self.options.fused_cfg,
        )
        dev = self.device
        with self._timer("stage1"):
            semantic = stage1_generate(
                stage1,
                [c.prompt_semantic.to(dev) for _, c in ready],
                [c.target_len for _, c in ready],
                [c.phones.to(dev) for _, c in ready] if ready[0][1].phones is not None else None,
                [c.finetune_cond.to(dev, self.dtype) for _, c in ready]
                if ready[0][1].finetune_cond is not None
                else None,
                opts1,
                noise,
            )
        del stage1  # else this reference keeps the model alive after release() below
        if self.options.low_memory:
            self.release("stage1")
        full_semantic = [
            torch.cat([c.prompt_semantic.to(dev), s]) for (_, c), s in zip(ready, semantic, strict=True)
        ]
        s1, sf = self.component("s2a_1layer"), self.component("s2a_full")
        with self._timer("s2a"):
            codes = metis_semantic_to_acoustic(
                s1,
                sf,
                full_semantic,
                [c.acoustic_prompt.to(dev) for _, c in ready],
                noise,
                steps_1layer=list(decoding.s2a_steps_1layer),
                steps_full=list(decoding.s2a_steps_full),
                cfg_1layer=decoding.s2a_cfg_1layer,
                cfg_full=decoding.s2a_cfg_full,
                temperature=decoding.s2a_temperature,
                filter_thres=decoding.s2a_filter_thres,
                rescale_cfg=decoding.s2a_rescale_cfg,
                fused_cfg=self.options.fused_cfg,
            )
        del s1, sf
        if self.options.low_memory:
            self.release("s2a_1layer", "s2a_full")
        return semantic, codes

    # -- long inputs (docs/LONGFORM.md) -----------------------------------------------------------
    def longform_options(self) -> Any:
        from .longform import LongformOptions

        o = self.options
        return LongformOptions(
            chunk_seconds=o.chunk_seconds,
            overlap_seconds=o.overlap_seconds,
            context_seconds=o.context_seconds,
            max_chars=o.max_chars,
        ).validate()

    def is_long(self, job: Job) -> bool:
        """Whether `job` goes through `run_long`: SE/TSE/VC inputs longer than one chunk, TTS texts
        longer than `max_chars`. Unreadable inputs stay on the normal path (it reports them)."""
        from .longform import BlockReader, seconds_to_frames

        lf = self.longform_options()
        if self.task == "tts":
            return bool(lf.enabled and job.text and len(job.text.strip()) > lf.max_chars)
        role = _MAIN_INPUT.get(self.task)
        if not lf.enabled or role is None or role not in job.inputs:
            return False
        try:
            return BlockReader(job.inputs[role]).n_frames > seconds_to_frames(lf.chunk_seconds)
        except MetisError:
            return False

    def run_long(self, job: Job, decoding: Decoding, stream: bool = False) -> JobResult:
        """Process one long job chunk by chunk with bounded memory.

        stream=True: finished blocks go straight into `job.output` through `AtomicWavWriter`
        (renamed into place only on success); the result has `wav=None` and
        `info["streamed"] = True`. stream=False: the blocks are joined and returned as `wav`.
        `self.on_chunk` (if set) gets a `longform.ChunkProgress` after every chunk.
        """
        from .audio import AtomicWavWriter
        from .constants import CODEC_SAMPLE_RATE

        t0 = time.perf_counter()
        lf = self.longform_options()
        info: dict[str, Any] = {}
        try:
            blocks = (
                self._tts_pieces(job, decoding, lf, info)
                if self.task == "tts"
                else self._audio_chunks(job, decoding, lf, info)
            )
            if stream:
                with AtomicWavWriter(job.output, CODEC_SAMPLE_RATE) as writer:
                    for block in blocks:
                        writer.write(block)
                wav, n_out = None, writer.frames_written
                info["streamed"] = True
            else:
                wav = np.concatenate([np.zeros(0, np.float32), *blocks])
                n_out = wav.shape[0]
        except FATAL:
            raise
        except MetisError as exc:
            return JobResult(job, None, error=str(exc), seconds=time.perf_counter() - t0)
        except OSError as exc:
            return JobResult(job, None, error=f"{job.output}: cannot write ({exc})")
        info["output_samples"] = int(n_out)
        return JobResult(
            job,
            wav,
            seconds=time.perf_counter() - t0,
            audio_seconds=info.pop("audio_seconds", 0.0),
            info=info,
        )

    def _progress(self, job: Job, index: int, total: int, done: int, expected: int) -> None:
        from .constants import CODEC_SAMPLE_RATE
        from .longform import ChunkProgress

        log.info("%s: chunk %d/%d done", job.output, index + 1, total)
        if self.on_chunk is not None:
            sr = CODEC_SAMPLE_RATE
            self.on_chunk(ChunkProgress(job.output, index, total, done / sr, expected / sr))

    def _audio_chunks(self, job: Job, decoding: Decoding, lf: Any, info: dict) -> Iterator[np.ndarray]:
        """SE / TSE / VC: yields finished 24 kHz blocks of a long input, chunk by chunk."""
        from . import longform as L
        from .constants import HOP_SAMPLES
        from .tasks import _prompt_codes

        reader = L.BlockReader(job.inputs[_MAIN_INPUT[self.task]])
        info["audio_seconds"] = reader.seconds
        prompt = None
        budget = L.TRAIN_MAX_SECONDS  # prompt (or carried context) + chunk stay in the training range
        if self.task in ("vc", "tse"):
            with self._timer("conditions"):
                prompt = _prompt_codes(self.tokenizers, job.inputs[_PROMPT_INPUT[self.task]])
            budget -= len(prompt[2]) / self.tokenizers.ssl_rate
            context = 0  # the fixed speaker prompt is the context (docs/LONGFORM.md)
        else:
            context = L.seconds_to_frames(lf.context_seconds)
            budget -= lf.context_seconds
        chunk_frames = L.seconds_to_frames(max(min(lf.chunk_seconds, budget), L.TRAIN_MIN_SECONDS))
        with self._timer("plan"):
            chunks = L.plan_chunks(
                reader.frame_energy(),
                chunk_frames,
                L.seconds_to_frames(lf.overlap_seconds),
                L.seconds_to_frames(lf.search_seconds),
            )
        info.update(chunks=len(chunks), max_chunk_frames=max(c.frames for c in chunks))
        stitch = L.Stitcher(reader.n_out)
        carry: tuple[torch.Tensor, torch.Tensor] | None = None  # (P,) semantic, (P, 12) acoustic
        for chunk, nxt in L.iter_pairs(chunks):
            ctx = 0 if carry is None else int(carry[0].shape[0])
            with self._timer("conditions"):
                wav16 = reader.read16(chunk.start - ctx, chunk.stop + _CHUNK_MARGIN_FRAMES)
                conds = self._chunk_conditions(job, wav16, carry, prompt)
            cjob = replace(job, seed=L.chunk_seed(job.seed, chunk.index))
            (sem,), (codes,) = self._generate_codes([(cjob, conds)], decoding)
            if codes.shape[0] < chunk.frames:
                log.warning("chunk %d: %d frames for %d; padded", chunk.index, codes.shape[0], chunk.frames)
            with self._timer("decode"):
                full = codes if carry is None else torch.cat([carry[1].to(codes.device), codes])
                wav = self.tokenizers.decode(full)[ctx * HOP_SAMPLES :]
            carry = None
            if nxt is not None and context:
                b = nxt.start - chunk.start
                a = max(0, b - context)
                carry = (sem[a:b].clone(), codes[a:b].clone())
            yield stitch.add(L.fit_length(wav, chunk.frames * HOP_SAMPLES), chunk)
            self._progress(job, chunk.index, len(chunks), stitch.emitted, reader.n_out)
        yield stitch.finish()
        info["max_read_samples"] = reader.max_block

    def _chunk_conditions(
        self,
        job: Job,
        wav16: np.ndarray,
        carry: tuple[torch.Tensor, torch.Tensor] | None,
        prompt: tuple[torch.Tensor, torch.Tensor, np.ndarray] | None,
    ) -> Conditions:
        """Conditions of one chunk (spec §1.4 flows). SE: [carried context ; chunk] input with the
        carried tokens as prompt; TSE/VC: [speaker prompt ; chunk] with the fixed prompt codes."""
        tok = self.tokenizers
        what = str(job.inputs[_MAIN_INPUT[self.task]])
        if prompt is not None:
            p_sem, p_ac, p16 = prompt
            feat = tok.ssl_features(np.concatenate([p16, wav16]), what=what)
        else:
            p_sem = torch.zeros(0, dtype=torch.long) if carry is None else carry[0]
            p_ac = torch.zeros(0, tok.num_codebooks, dtype=torch.long) if carry is None else carry[1]
            feat = tok.ssl_features(wav16, what=what)
        return Conditions(
            prompt_semantic=p_sem,
            target_len=int(feat.shape[0] - p_sem.shape[0]),
            acoustic_prompt=p_ac,
            finetune_cond=feat,
            ssl_forwards=0,  # chunk seeds are derived, not official runs: no hidden draws
        )

    def _tts_pieces(self, job: Job, decoding: Decoding, lf: Any, info: dict) -> Iterator[np.ndarray]:
        """TTS with long text: one generation per sentence-bounded piece, same speaker prompt."""
        from . import longform as L
        from .constants import CODEC_SAMPLE_RATE

        pieces = L.split_text(job.text or "", lf.max_chars)
        durations = L.split_duration(job.duration, pieces) if job.duration else [None] * len(pieces)
        info.update(chunks=len(pieces), piece_chars=[len(p) for p in pieces])
        fade = int(_TTS_FADE_SECONDS * CODEC_SAMPLE_RATE)
        done = 0
        for i, (piece, dur) in enumerate(zip(pieces, durations, strict=True)):
            pjob = replace(job, text=piece, duration=dur, seed=L.chunk_seed(job.seed, i))
            conds = self.conditions(pjob)
            info["audio_seconds"] = conds.audio_seconds
            (_,), (codes,) = self._generate_codes([(pjob, conds)], decoding)
            with self._timer("decode"):
                wav = self.tokenizers.decode(codes)
            wav = L.edge_fades(wav, fade, fade_in=i > 0, fade_out=i < len(pieces) - 1)
            done += wav.shape[0]
            yield wav
            self._progress(job, i, len(pieces), done, 0)


_MAIN_INPUT = {"se": "input", "tse": "mix", "vc": "source"}  # the input that gets chunked
_PROMPT_INPUT = {"tse": "enrol", "vc": "reference"}  # the fixed speaker prompt
_CHUNK_MARGIN_FRAMES = 3  # audio read past a chunk's end so the model yields >= its frames
_TTS_FADE_SECONDS = 0.005  # fade at the edges of TTS pieces (no overlap: durations add up)

"""Every user-facing option, defined once: default, help text and valid range in one place.

The CLI generates its Typer options from these dataclasses (`metis_cli.cli.params`), the Python
API (`metis_cli.load`) takes the same names, and the service and the distributed runners read
them from here too. A field's `metadata` carries:

  flag     the CLI flag ("--steps"); no flag: API only
  short    an optional short flag ("-q")
  help     one line for `--help`
  check    a validator: value -> None, raising `UsageError` with `flag: must be ...`
  tasks    the task commands that show the option (default: all)

Validation happens before any model loads: `validate(obj)` runs every field's check, so a bad
value is one line `metis: error: --steps: must be >= 1 (got 0)` with exit code 2.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from metis_cli.constants import TRAIN_MAX_SECONDS, TRAIN_MIN_SECONDS
from metis_cli.errors import UsageError

ALL_TASKS = ("tts", "vc", "tse", "se", "l2s")
# The one map between task names and the command / HTTP route names where they differ
# (`metis enhance`, `POST /v1/enhance` run task "se"); every front end reads it from here.
TASK_COMMANDS = {"se": "enhance"}
TASK_ALIASES = {command: task for task, command in TASK_COMMANDS.items()}  # "enhance" -> "se"


def task_of(name: str) -> str:
    """The task a command / route name runs ("enhance" -> "se"; a task name maps to itself)."""
    return TASK_ALIASES.get(name, name)


def command_of(task: str) -> str:
    """The command / route name of a task ("se" -> "enhance"; the others keep their name)."""
    return TASK_COMMANDS.get(task, task)


DTYPE_CHOICES = ("float32", "bfloat16", "float16")
ATTENTION_CHOICES = ("eager", "sdpa")
LANGUAGE_CHOICES = ("auto", "en", "zh", "ja", "ko", "fr", "de")
MAX_SEED = 2**63 - 1  # seeds are 0..2**63-1 (torch.Generator.manual_seed's range)
MAX_STEPS = 1000  # stage-1 / S2A steps: the official settings use 10-40; beyond 1000 is a typo
MAX_BATCH = 1024
MAX_DURATION_SECONDS = 600.0  # TTS target duration (longer texts are spoken piece by piece)
MAX_TEXT_CHARS = 100_000  # TTS text length


# ---- validators ------------------------------------------------------------------------------------


def _num(flag: str, value: Any, kind: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{flag}: must be a number (got {value!r})")
    if kind is int and not isinstance(value, int):  # 2.0 is not a step count
        raise UsageError(f"{flag}: must be an integer (got {value!r})")
    if not math.isfinite(value):
        raise UsageError(f"{flag}: must be a finite number (got {value})")
    return value


def at_least(lo: float, kind: type = float, hi: float | None = None, above: bool = False) -> Callable:
    """Check lo <= v (or lo < v with above=True), and v <= hi when given; None passes."""

    def check(flag: str, v: Any) -> None:
        if v is None:
            return
        _num(flag, v, kind)
        if (v <= lo) if above else (v < lo):
            raise UsageError(f"{flag}: must be {'>' if above else '>='} {lo:g} (got {v:g})")
        if hi is not None and v > hi:
            raise UsageError(f"{flag}: must be <= {hi:g} (got {v:g})")

    check.bounds = (lo, hi, above, kind)  # type: ignore[attr-defined]  # read by typed front ends
    return check


def duration(flag: str, v: Any) -> None:
    """A TTS target duration: more than 0 and at most MAX_DURATION_SECONDS seconds; None passes."""
    if v is None:
        return
    _num(flag, v, float)
    if not 0 < v <= MAX_DURATION_SECONDS:
        raise UsageError(
            f"{flag}: must be more than 0 and at most {MAX_DURATION_SECONDS:g} seconds (got {v:g})"
        )


def one_of(choices: Iterable[str]) -> Callable:
    choices = tuple(choices)

    def check(flag: str, v: Any) -> None:
        if v is not None and v not in choices:
            raise UsageError(f"{flag}: must be one of {', '.join(choices)} (got {v!r})")

    check.choices = choices  # type: ignore[attr-defined]
    return check


def _device(flag: str, v: Any) -> None:
    if not isinstance(v, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
        raise UsageError(f"{flag}: must be auto, cpu, cuda, cuda:N or mps (got {v!r})")


def _seed(flag: str, v: Any) -> None:
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise UsageError(f"{flag}: must be an integer 0..2**63-1 (got {v!r})")
    if not 0 <= v <= MAX_SEED:
        raise UsageError(f"{flag}: must be within 0..2**63-1 (got {v})")


def _url(flag: str, v: Any) -> None:
    if v is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", str(v)):
        raise UsageError(f"{flag}: must be an http:// or https:// URL (got {v!r})")


def parse_s2a_steps(value: str | int | None, flag: str = "--s2a-steps") -> dict[str, tuple[int, ...]]:
    """'N' or 'A,B' → the S2A step schedules (1-layer model; full model's layers 1, 2 and 1 x 10)."""
    if value is None:
        return {}
    try:
        parts = [int(p) for p in str(value).split(",")]
    except ValueError:
        raise UsageError(f"{flag}: must be N or A,B (got {value!r})") from None
    if not 1 <= len(parts) <= 2:
        raise UsageError(f"{flag}: must be N or A,B (got {value!r})")
    for p in parts:
        at_least(1, int, MAX_STEPS)(flag, p)
    a, b = parts[0], parts[-1]
    return {"s2a_steps_1layer": (a,), "s2a_steps_full": (a, b) + (1,) * 10}


def _s2a_steps(flag: str, v: Any) -> None:
    parse_s2a_steps(v, flag)


def opt(
    default: Any,
    flag: str | None,
    help: str,
    check: Callable | None = None,
    short: str | None = None,
    tasks: tuple[str, ...] = ALL_TASKS,
    envvar: str | None = None,
) -> Any:
    """A dataclass field with its CLI metadata (see the module docstring)."""
    meta = {"flag": flag, "short": short, "help": help, "check": check, "tasks": tasks, "envvar": envvar}
    return field(default=default, metadata=meta)


def validate(obj: Any) -> Any:
    """Run every field's check; returns obj. Raises UsageError naming the flag."""
    for f in fields(obj):
        check = f.metadata.get("check")
        if check is not None:
            check(f.metadata.get("flag") or f.name, getattr(obj, f.name))
    return obj


def names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def build(cls: type, values: dict[str, Any]) -> Any:
    """cls(**the values that are its fields), validated. Unknown keys are left to the caller."""
    return validate(cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__}))


# ---- the option groups ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodingOptions:
    """Decoding overrides (spec §1.5). None: the model card's official value for the task."""

    # stage-1 decoding steps
    steps: int | None = opt(
        None, "--steps", "Stage-1 decoding steps (default: the model card's official value).",
        at_least(1, int, MAX_STEPS),
    )  # fmt: skip
    # stage-1 classifier-free guidance scale
    cfg: float | None = opt(
        None, "--cfg", "Stage-1 classifier-free guidance scale (0 disables).", at_least(0)
    )
    # stage-1 start temperature of the Gumbel sampler
    temperature: float | None = opt(
        None, "--temperature", "Stage-1 start temperature (official 0.9).", at_least(0, above=True)
    )
    # S2A schedules: "N" or "A,B"
    s2a_steps: str | None = opt(
        None, "--s2a-steps",
        "S2A steps: N or A,B = steps of the 1-layer model, steps of the full model's layer 1 "
        "(official 40,16; the remaining layers take one step each).",
        _s2a_steps,
    )  # fmt: skip
    # S2A sampling temperature
    s2a_temperature: float | None = opt(
        None, "--s2a-temperature", "S2A temperature (official 1.5).", at_least(0, above=True)
    )

    def overrides(self) -> dict[str, Any]:
        """The fields of `core.decoding.Decoding` these options set (None fields left to the card)."""
        out = {k: getattr(self, k) for k in ("steps", "cfg", "temperature", "s2a_temperature")}
        out = {k: v for k, v in out.items() if v is not None}
        out.update(parse_s2a_steps(self.s2a_steps))
        return out


@dataclass(frozen=True)
class ModelOptions:
    """Which model, and where its files come from."""

    # a model card name (`metis models`) or a fine-tuned model folder; None: the task's default
    model: str | None = opt(
        None, "--model", "Model card name (see `metis models`) or a fine-tuned model folder.", short="-m"
    )
    # local weights laid out as <org>/<repo>/<path-in-repo>
    checkpoint_dir: Path | None = opt(
        None, "--checkpoint-dir",
        "Local weights laid out as <org>/<repo>/<path-in-repo> (default: the Hugging Face cache).",
        envvar="METIS_CHECKPOINT_DIR",
    )  # fmt: skip
    # never download (None: honour HF_HUB_OFFLINE)
    offline: bool | None = opt(None, "--offline", "Never download anything (also HF_HUB_OFFLINE=1).")


@dataclass(frozen=True)
class EngineOptions:
    """How to run (not what to compute). Defaults are the exact reference mode."""

    # "auto" | "cpu" | "cuda" | "cuda:N" | "mps"
    device: str = opt(
        "auto", "--device",
        "auto, cpu, cuda, cuda:N or mps. The fp32 reference (official tokens) is the CPU; fp32 on CUDA "
        "(TF32 off) rounds GEMMs differently and uses CUDA's random generator, so a seed gives other audio.",
        _device,
    )  # fmt: skip
    # "float32" (reference) | "bfloat16" (fast) | "float16" (GPU only)
    dtype: str = opt(
        "float32", "--dtype",
        "float32 (exact reference mode), bfloat16 (fast mode) or float16 (GPU only).",
        one_of(DTYPE_CHOICES),
    )  # fmt: skip
    # "eager" (reference) | "sdpa" (fast mode: fused attention kernels)
    attention: str = opt(
        "eager", "--attention", "eager (reference) or sdpa (fast mode).", one_of(ATTENTION_CHOICES)
    )
    # fast mode: conditional + unconditional CFG passes in one forward
    fused_cfg: bool = opt(False, "--fused-cfg", "Fast mode: both CFG passes in one batched forward.")
    # fast mode for GPUs: every decoding step has the same shapes (finished items ride along)
    static_shapes: bool = opt(
        False, "--static-shapes",
        "GPU fast mode: fixed shapes per decoding step (finished items stay in the batch); tokens "
        "equal the default loop's unless two confidence scores tie exactly.",
    )  # fmt: skip
    # fast mode for GPUs: the backbone forward captured with torch.compile(mode="reduce-overhead")
    cuda_graphs: bool = opt(
        False,
        "--cuda-graphs",
        "GPU fast mode: CUDA-graph the per-step forward (with --static-shapes; no-op off CUDA).",
    )
    # jobs per padded batch
    batch_size: int = opt(
        1, "--batch-size",
        "Jobs per padded batch. In fp32 each item's tokens equal batch size 1; in bf16/fp16 padding "
        "changes rounding.",
        at_least(1, int, MAX_BATCH),
    )  # fmt: skip
    # torch CPU threads (None: `default_threads`: cores / processes of this machine's launch)
    threads: int | None = opt(
        None, "--threads",
        "CPU threads for torch (intra-op). Default: all cores, or cores / local processes when a "
        "launcher runs several on one machine (LOCAL_WORLD_SIZE, SLURM_STEP_TASKS_PER_NODE).",
        at_least(1, int, 4096),
    )  # fmt: skip
    # free each stage's models once the batch no longer needs them
    low_memory: bool = opt(
        False, "--low-memory", "Keep only the models the current stage needs resident (slower, less memory)."
    )
    # bf16: keep converted (and LoRA-merged) weights in $METIS_CACHE_DIR/bf16 (weight_cache.py)
    bf16_cache: bool = opt(True, None, "bf16: cache converted weights on disk.")
    # CUDA fp32: allow TF32 matmuls/convolutions (off by default: closer to the reference)
    allow_tf32: bool = opt(False, None, "CUDA fp32: allow TF32 (fast, less exact).")
    # L2S: a MediaPipe Tasks face-detector model file (None: $METIS_FACE_MODEL or the downloaded ones)
    face_model: Path | None = opt(
        None, "--face-model",
        "Face-detector model file (.tflite) for the MediaPipe Tasks API (default: the models of "
        "`metis download face-detector`; also METIS_FACE_MODEL).",
        tasks=("l2s",),
    )  # fmt: skip
    # L2S: the Auto-AVSR visual encoder model.pth (model.json beside it)
    visual_checkpoint: Path | None = opt(
        None, "--visual-checkpoint",
        "Auto-AVSR visual-only model.pth (LRS3_V_WER19.1; model.json beside it). Not shipped: see "
        "`metis models`.",
        tasks=("l2s",), envvar="METIS_VISUAL_CHECKPOINT",
    )  # fmt: skip


@dataclass(frozen=True)
class LongformOptions:
    """How long inputs are cut (seconds). `chunk_seconds == 0` disables chunking."""

    # longest chunk, overlaps included (3-30 s; 0 = never chunk)
    chunk_seconds: float = opt(
        20.0, "--chunk-seconds",
        "Inputs longer than this run in chunks of at most this length (3-30 s; 0 = never).",
        tasks=("se", "tse", "vc"),
    )  # fmt: skip
    # crossfade length at each join
    overlap_seconds: float = opt(
        1.0, "--overlap-seconds", "Overlap of neighbouring chunks, joined by an equal-power crossfade.",
        tasks=("se", "tse", "vc"),
    )  # fmt: skip
    # SE: previous output tokens carried as the next chunk's prompt (0 = off)
    context_seconds: float = opt(
        2.0, "--context-seconds",
        "Enhancement: seconds of the previous chunk's output carried as the next chunk's prompt.",
        tasks=("se",),
    )  # fmt: skip
    # window around each nominal cut searched for low energy
    search_seconds: float = opt(2.0, None, "Window searched for a quiet cut.")
    # TTS: longest text piece (characters)
    max_chars: int = opt(
        300, "--max-chars", "Texts longer than this are spoken sentence by sentence.", tasks=("tts",)
    )

    def validate(self) -> LongformOptions:
        """Ranges that depend on each other (chunk, overlap, context); UsageError naming the flag."""
        for name in ("chunk_seconds", "overlap_seconds", "context_seconds", "search_seconds"):
            _num("--" + name.replace("_", "-"), getattr(self, name), float)
        _num("--max-chars", self.max_chars, int)
        c, o = self.chunk_seconds, self.overlap_seconds
        if c and not TRAIN_MIN_SECONDS <= c <= TRAIN_MAX_SECONDS:
            raise UsageError(f"--chunk-seconds: must be 0 (off) or within 3-30 s (got {c:g})")
        if c and not 0.02 <= o <= c / 4:
            raise UsageError(
                f"--overlap-seconds: must be within 0.02 s and chunk/4 = {c / 4:g} s (got {o:g})"
            )
        if not 0 <= self.context_seconds <= 10:
            raise UsageError(f"--context-seconds: must be within 0-10 s (got {self.context_seconds:g})")
        if c and self.context_seconds >= c - o:
            raise UsageError(
                f"--context-seconds: must be shorter than chunk - overlap = {c - o:g} s "
                f"(got {self.context_seconds:g})"
            )
        if self.search_seconds < 0:
            raise UsageError(f"search window: must be >= 0 s (got {self.search_seconds:g})")
        if self.max_chars < 20:
            raise UsageError(f"--max-chars: must be >= 20 (got {self.max_chars})")
        return self

    @property
    def enabled(self) -> bool:
        return self.chunk_seconds > 0


@dataclass(frozen=True)
class OutputPolicy:
    """What happens to output files that exist."""

    # replace existing output files
    overwrite: bool = opt(False, "--overwrite", "Replace existing output files.")
    # skip jobs whose output file exists
    skip_existing: bool = opt(False, "--skip-existing", "Skip jobs whose output file exists.")

    @property
    def existing(self) -> str:
        """ "error" | "overwrite" | "skip"."""
        if self.overwrite and self.skip_existing:
            raise UsageError("--overwrite, --skip-existing: give one, not both")
        return "overwrite" if self.overwrite else ("skip" if self.skip_existing else "error")


@dataclass(frozen=True)
class ReportOptions:
    """How results are shown (CLI): stdout carries results only."""

    # one JSON object per job on stdout
    json: bool = opt(False, "--json", "Print one JSON object per job on stdout.")
    # nothing on stderr but errors
    quiet: bool = opt(
        False, "--quiet", "No progress, warnings or summary on stderr (errors only).", short="-q"
    )
    # client mode (metis_cli/serve/client.py): run the jobs on a running `metis serve`
    server: str | None = opt(
        None, "--server",
        "Send the jobs to a running `metis serve` at this URL (http://HOST:PORT) instead of loading "
        "models here; METIS_API_KEY is sent as its Bearer token.",
        _url, tasks=("tts", "vc", "tse", "se"), envvar="METIS_SERVER",
    )  # fmt: skip


@dataclass(frozen=True)
class JobDefaults:
    """Per-job values given once on the command line (a manifest row may set its own)."""

    # seeds every job without its own seed (the same seed for all; default: random per job)
    seed: int | None = opt(
        None, "--seed",
        "Random seed 0..2**63-1 for every job without its own (default: random; always reported).",
        _seed,
    )  # fmt: skip


# ---- sharded and resumable runs (metis_cli/runs/shard.py, metis_cli/runs/ledger.py) -----------------


def _shard(flag: str, v: Any) -> None:
    if v is None:
        return
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(v))
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise UsageError(f"{flag}: must be I/N with 0 <= I < N, e.g. 0/8 (got {v!r})")


@dataclass(frozen=True)
class RunControl:
    """Which share of the planned jobs this process runs, and the results ledger."""

    # "I/N" (0-based); None: from RANK/WORLD_SIZE (torchrun, accelerate) or SLURM, else everything
    shard: str | None = opt(
        None, "--shard",
        "Run shard I of N (0-based, I/N: planned job i when i mod N == I). Default: from RANK/"
        "WORLD_SIZE (torchrun, accelerate), SLURM_ARRAY_TASK_ID or srun's SLURM_PROCID, else all jobs.",
        _shard,
    )  # fmt: skip
    # JSONL ledger: one --json record per job, fsync'd as it finishes (per shard: FILE.shard-I-of-N.jsonl)
    results: Path | None = opt(
        None, "--results",
        "Results ledger (JSONL): one --json record per job, on disk as each job finishes. Sharded "
        "runs write FILE.shard-0000I-of-0000N.jsonl. `metis results FILE` merges them.",
    )  # fmt: skip
    # skip jobs the ledger records as done (output there and complete)
    resume: bool = opt(
        False, "--resume",
        "Continue the run of --results: skip jobs recorded ok whose output is complete and whose row "
        "and settings are unchanged; rerun failed, interrupted and changed ones.",
    )  # fmt: skip
    # with --resume: rerun jobs recorded as failed
    retry_failed: bool = opt(
        True, "--retry-failed/--no-retry-failed", "With --resume: rerun jobs that failed before."
    )
    # --batch-size > 1: sort jobs by input length so padded batches hold similar lengths
    length_buckets: bool = opt(
        True, "--length-buckets/--no-length-buckets",
        "With --batch-size > 1: batch jobs of similar input length (longest first) instead of "
        "plan order.",
    )  # fmt: skip


@dataclass(frozen=True)
class RayOptions:
    """`metis ray` (metis_cli/runs/ray.py): the manifest, the cluster and its actors."""

    # the jobs: a manifest is required (checked by the command)
    manifest: Path | None = opt(None, "--manifest", "Jobs file (.jsonl or .csv), one job per line.")
    # the -o folder of the manifest's outputs
    output: Path | None = opt(None, "--output", "Output folder.", short="-o")
    # actors, each with its own pipeline
    workers: int = opt(1, "--workers", "Ray actors, each with its own pipeline.", at_least(1, int))
    # GPUs per actor
    gpus_per_worker: float = opt(0.0, "--gpus-per-worker", "GPUs per actor (0: CPU actors).", at_least(0))
    # CPUs per actor
    cpus_per_worker: float = opt(1.0, "--cpus-per-worker", "CPUs per actor.", at_least(0, above=True))
    # CPUs of a local cluster started for the run
    num_cpus: int | None = opt(
        None, "--num-cpus", "CPUs of a local cluster (default: all of them).", at_least(1, int)
    )
    # the cluster to join (None: RAY_ADDRESS, else a local one)
    address: str | None = opt(
        None, "--address", "Ray cluster to join (default: RAY_ADDRESS, else a local cluster)."
    )
    # how long to wait for the cluster's address and for nodes that can hold the actors
    ray_timeout: float = opt(
        60.0, "--ray-timeout",
        "Seconds to wait for --address to answer and for nodes that can hold the actors (an "
        "autoscaler's) before failing with the missing resource.",
        at_least(0, above=True),
    )  # fmt: skip


@dataclass(frozen=True)
class TrainOptions:
    """Training schedule and optimiser (`metis finetune`, `metis pretrain`); ranges are checked
    by `train.loop.check_options` (usage errors before anything loads)."""

    # passes over the data (ignored when max_steps is given)
    epochs: int = opt(3, "--epochs", "Passes over the data (ignored with --max-steps).", tasks=())
    # total optimizer steps (fixes the schedule)
    max_steps: int | None = opt(
        None,
        "--max-steps",
        "Total optimizer steps; fixes the schedule (a larger value extends a run).",
        tasks=(),
    )
    # items per micro-batch
    batch_size: int = opt(8, "--batch-size", "Items per micro-batch.", tasks=())
    # micro-batches per optimizer step
    grad_accum: int = opt(1, "--grad-accum", "Micro-batches per optimizer step.", tasks=())
    # peak learning rate (AdamW)
    lr: float = opt(1e-4, "--lr", "Peak learning rate (AdamW).", tasks=())
    # linear warm-up steps (capped at a tenth of a shorter run), then cosine decay
    warmup: int = opt(
        100, "--warmup", "Linear warm-up steps (at most a tenth of the run), then cosine.", tasks=()
    )
    # AdamW weight decay
    weight_decay: float = opt(0.0, "--weight-decay", "AdamW weight decay.", tasks=())
    # max gradient norm (0 = off)
    grad_clip: float = opt(1.0, "--grad-clip", "Max gradient norm (0 = off).", tasks=())
    # random crop of longer items (50 frames = 1 s); not tts items
    max_frames: int = opt(
        500, "--max-frames", "Random crop of longer items, in 50 Hz frames (not tts).", tasks=()
    )
    # seeds data order, crops, masks and new LoRA/adapter weights
    seed: int = opt(0, "--seed", "Seeds data order, crops, masks and new LoRA/adapter weights.", tasks=())
    # checkpoint (and export) interval in steps; 0 = only at the end
    save_every: int = opt(
        500, "--save-every", "Checkpoint and export every N steps (0 = at the end only).", tasks=()
    )
    # extra held-out evaluations every N steps (0 = per epoch and at the end)
    val_every: int = opt(
        0, "--val-every", "Also evaluate --val every N steps (always per epoch, at the end).", tasks=()
    )
    # probability of a micro-batch without prompt; None = the model config's cfg_scale
    cfg_scale: float | None = opt(
        None, "--cfg-scale",
        "Probability that a batch trains without its prompt (CFG dropout; default: the model config's "
        "cfg_scale, 0.15 released; se data has no prompt).",
        tasks=(),
    )  # fmt: skip
    # bf16 autocast; None = on for CUDA, off on CPU
    bf16: bool | None = opt(
        None, "--bf16/--fp32", "bf16 autocast (default: on for CUDA, off on CPU).", tasks=()
    )
    # stop (checkpointed, resumable) after this step
    stop_after: int | None = opt(
        None, "--stop-after", "Stop after this step with a checkpoint (--resume continues, same schedule).",
        tasks=(),
    )  # fmt: skip


def required(flag: str, help: str, short: str | None = None) -> Any:
    """A field without a default: a required CLI option (`...` for Typer)."""
    meta = {"flag": flag, "short": short, "help": help, "check": None, "tasks": (), "envvar": None}
    return field(metadata=meta)


@dataclass(frozen=True)
class TrainRun:
    """Where a training run writes and how it starts (`metis finetune`, `metis pretrain`)."""

    out: Path = required("--out", "Output model folder (card.json, weights, log.jsonl).", short="-o")
    resume: bool = opt(False, "--resume", "Continue the run saved in OUT (bit-identical on CPU).", tasks=())
    name: str | None = opt(None, "--name", "Model name in card.json (default: the folder name).", tasks=())
    cache_dir: Path | None = opt(
        None, "--cache-dir", "Feature cache folder (default: $METIS_CACHE_DIR/features or ~/.cache/metis).",
        tasks=(),
    )  # fmt: skip


@dataclass(frozen=True)
class FinetuneInputs:
    """What `metis finetune` trains: task, data and the start model."""

    task: str = required("--task", "se, tse, vc, tts or l2s.", short="-t")
    data: Path = required("--data", "Training manifest: one JSON object per line (docs/TRAINING.md).")
    val: Path | None = opt(
        None, "--val", "Held-out manifest: loss and masked-token accuracy per epoch.", tasks=()
    )
    base: str | None = opt(
        None, "--base",
        "Start model: card name or folder (default: the task's released model, else metis-base; "
        "l2s: metis-l2s or an l2s folder).",
        short="-m", tasks=(),
    )  # fmt: skip
    full: bool = opt(False, "--full", "Full-scale fine-tuning: train every stage-1 weight.", tasks=())
    lora_r: int | None = opt(
        None, "--lora-r", "Rank of a fresh LoRA (default: se/tse/tts/l2s 32, vc 16).", tasks=()
    )
    lora_alpha: float | None = opt(
        None, "--lora-alpha", "Alpha of a fresh LoRA (default: se/tse/tts/l2s 64, vc 32; else 2 x rank).",
        tasks=(),
    )  # fmt: skip


@dataclass(frozen=True)
class PretrainInputs:
    """What `metis pretrain` trains: plain audio and the start model or config."""

    data: Path = required("--data", "Text file of audio paths (one a line) or a folder of audio files.")
    base: str = opt("metis-base", "--base", "Base model to continue from.", short="-m", tasks=())
    config: Path | None = opt(
        None, "--config", "Start from random weights: JSON with a t2s_model block (--base ignored).", tasks=()
    )
    val: Path | None = opt(None, "--val", "Held-out audio list: loss and masked-token accuracy.", tasks=())


# ---- the service (`metis serve`, metis_cli/serve) ------------------------------------------------------

SERVABLE_TASKS = ("tts", "se", "vc", "tse")  # l2s needs video and a visual checkpoint: not served


def parse_tasks(value: str | Iterable[str], flag: str = "--tasks") -> tuple[str, ...]:
    """'tts,se' (or a sequence) → ('tts', 'se'); 'enhance' is 'se'; unknown names: UsageError."""
    raw_names = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for raw in raw_names:
        name = TASK_ALIASES.get(str(raw).strip(), str(raw).strip())
        if not name:
            continue
        if name not in SERVABLE_TASKS:
            raise UsageError(
                f"{flag}: must be a comma-separated list of {', '.join(SERVABLE_TASKS)} (got {raw!r})"
            )
        if name not in out:
            out.append(name)
    if not out:
        raise UsageError(f"{flag}: give at least one of {', '.join(SERVABLE_TASKS)}")
    return tuple(out)


def _tasks(flag: str, v: Any) -> None:
    parse_tasks(v, flag)


@dataclass(frozen=True)
class ServeOptions:
    """`metis serve`: where it listens, what it loads, how it batches and who may call it."""

    host: str = opt("127.0.0.1", "--host", "Address to bind (default: loopback only).", tasks=())
    port: int = opt(
        8000, "--port", "Port to listen on (0: any free port).", at_least(0, int, 65535), tasks=()
    )
    tasks: str = opt(
        "tts,se,vc,tse", "--tasks", "Pipelines to load at start (tts, se, vc, tse).", _tasks, tasks=()
    )
    max_batch: int = opt(
        8, "--max-batch", "Most jobs per padded batch (the engine's batch size).",
        at_least(1, int, MAX_BATCH), tasks=(),
    )  # fmt: skip
    max_wait_ms: float = opt(
        20.0, "--max-wait-ms", "How long a batch's first request waits for others (ms).",
        at_least(0, float, 60_000), tasks=(),
    )  # fmt: skip
    max_queue: int = opt(
        64, "--max-queue", "Waiting requests per pipeline; beyond: 429.", at_least(1, int, 100_000), tasks=()
    )
    request_timeout: float = opt(
        300.0, "--request-timeout", "Seconds a request may take in all; beyond: 504.",
        at_least(0, float, above=True), tasks=(),
    )  # fmt: skip
    api_key: str | None = opt(
        None, "--api-key", "Require Authorization: Bearer KEY.", envvar="METIS_API_KEY", tasks=()
    )
    no_auth: bool = opt(False, "--no-auth", "Allow a non-loopback --host without an API key.", tasks=())
    voices_file: Path | None = opt(
        None, "--voices", "voices.json: name -> {audio, text, language} (paths relative to it).", tasks=()
    )
    voices_dir: Path | None = opt(
        None, "--voices-dir", "Keep uploaded voices in this folder too (reloaded at start).", tasks=()
    )
    cors_origins: str | None = opt(
        None, "--cors-origins",
        "Comma-separated origins whose pages may call the API (CORS; '*': any). Default: none.",
        tasks=(),
    )  # fmt: skip
    shutdown_timeout: float = opt(
        30.0, "--shutdown-timeout", "On SIGTERM/SIGINT, wait at most this long for requests in flight (s).",
        at_least(0, float), tasks=(),
    )  # fmt: skip
    idle_timeout: float = opt(
        5.0, "--idle-timeout", "Close a kept-alive connection idle for this long (s).",
        at_least(0, float, above=True), tasks=(),
    )  # fmt: skip
    body_timeout: float = opt(
        60.0, "--body-timeout",
        "A request's headers, then its body, must arrive within this time (s); beyond: closed / 408.",
        at_least(0, float, above=True), tasks=(),
    )  # fmt: skip
    verbose: bool = opt(False, "--verbose", "Debug logging.", tasks=())

    @property
    def served_tasks(self) -> tuple[str, ...]:
        return parse_tasks(self.tasks)

    @property
    def origins(self) -> tuple[str, ...]:
        """The CORS origins ('*' alone: any)."""
        return tuple(o.strip() for o in (self.cors_origins or "").split(",") if o.strip())


@dataclass(frozen=True)
class ServeLimits:
    """Per-request limits of `metis serve`; each rejected with 413/422 and a one-line message."""

    max_upload_mb: float = opt(
        50.0, "--max-upload-mb", "Largest request body (MiB).", at_least(0, float, above=True), tasks=()
    )
    max_audio_seconds: float = opt(
        600.0, "--max-audio-seconds",
        "Longest uploaded audio to process (seconds; long inputs run in chunks).",
        at_least(0, float, above=True), tasks=(),
    )  # fmt: skip
    max_voice_seconds: float = opt(
        float(TRAIN_MAX_SECONDS), "--max-voice-seconds",
        f"Longest speaker prompt or registered voice (seconds; the models were trained on "
        f"{TRAIN_MIN_SECONDS:g}-{TRAIN_MAX_SECONDS:g} s).",
        at_least(0, float, above=True), tasks=(),
    )  # fmt: skip
    max_duration: float = opt(
        float(TRAIN_MAX_SECONDS), "--max-duration",
        "Longest TTS duration a request may ask for per sentence piece (seconds; longer texts are "
        "spoken sentence by sentence).",
        at_least(0, float, MAX_DURATION_SECONDS, above=True), tasks=(),
    )  # fmt: skip
    max_text_chars: int = opt(
        2000, "--max-text-chars", "Longest TTS text (characters).", at_least(1, int, MAX_TEXT_CHARS), tasks=()
    )
    max_steps: int = opt(
        200,
        "--max-steps",
        "Most decoding steps a request may ask for.",
        at_least(1, int, MAX_STEPS),
        tasks=(),
    )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@dataclass(frozen=True)
class RayServeOptions:
    """`metis serve --ray`: the service as a Ray Serve deployment (metis_cli/serve/ray_serve.py)."""

    ray: bool = opt(False, "--ray", "Serve through Ray Serve: one replica per GPU or CPU process.", tasks=())
    replicas: int = opt(
        0, "--replicas", "Ray Serve replicas (0: one per GPU of the cluster, else one).",
        at_least(0, int, 1024), tasks=(),
    )  # fmt: skip
    ray_address: str | None = opt(
        None,
        "--ray-address",
        "Ray cluster to join ('auto', ray://HOST:PORT); default: a local one.",
        tasks=(),
    )
    cpus_per_replica: float = opt(
        1.0, "--cpus-per-replica", "CPUs each replica reserves.", at_least(0, float, above=True), tasks=()
    )
    gpus_per_replica: float = opt(
        0.0, "--gpus-per-replica", "GPUs each replica reserves (1: one replica per GPU).", at_least(0, float),
        tasks=(),
    )  # fmt: skip


# groups whose options every task command shows, in --help order
COMMAND_GROUPS: tuple[type, ...] = (
    LongformOptions,
    ModelOptions,
    DecodingOptions,
    JobDefaults,
    EngineOptions,
    OutputPolicy,
    ReportOptions,
    RunControl,
)


def _leading_int(text: str | None) -> int | None:
    m = re.match(r"\s*(\d+)", text or "")
    return int(m.group(1)) if m else None


def local_processes(env: Mapping[str, str] | None = None) -> int | None:
    """Processes a launcher runs on this machine: LOCAL_WORLD_SIZE (torchrun, accelerate), else
    SLURM_STEP_TASKS_PER_NODE (srun: "2" or "2(x3)"); None when not known (plain `--shard I/N`
    processes started by hand: give --threads)."""
    env = os.environ if env is None else env
    for name in ("LOCAL_WORLD_SIZE", "SLURM_STEP_TASKS_PER_NODE"):
        n = _leading_int(env.get(name))
        if n:
            return n
    return None


def default_threads(env: Mapping[str, str] | None = None, cores: int | None = None) -> int | None:
    """The torch thread count when --threads is not given: cores // local processes (at least
    1) when several processes share this machine, else None (torch's own default)."""
    procs = local_processes(env)
    if not procs or procs <= 1:
        return None
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // procs)


def resolve_threads(threads: int | None, env: Mapping[str, str] | None = None) -> int | None:
    """--threads when given, else `default_threads`; None: leave torch's setting alone."""
    return threads if threads is not None else default_threads(env)


def split(values: dict[str, Any], groups: Iterable[type] = COMMAND_GROUPS) -> dict[type, Any]:
    """Flat keyword values → one validated instance per group (unknown keys: UsageError)."""
    groups = tuple(groups)
    known = {n for g in groups for n in names(g)}
    unknown = sorted(k for k in values if k not in known)
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(unknown)}")
    out = {g: build(g, values) for g in groups}
    if LongformOptions in out:
        out[LongformOptions].validate()
    return out


def defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


__all__ = [
    "COMMAND_GROUPS",
    "DecodingOptions",
    "EngineOptions",
    "JobDefaults",
    "LongformOptions",
    "ModelOptions",
    "OutputPolicy",
    "RayOptions",
    "ReportOptions",
    "RunControl",
    "RayServeOptions",
    "ServeLimits",
    "ServeOptions",
    "build",
    "default_threads",
    "local_processes",
    "parse_s2a_steps",
    "parse_tasks",
    "resolve_threads",
    "replace",
    "split",
    "validate",
]

"""Model cards (`models/*.json`): which files a model needs, their layout, its architecture
config and its default decoding settings; and where those files live on this machine.

Files are found either in a local tree laid out as `<org>/<repo>/<path-in-repo>`
(`--checkpoint-dir` / `$METIS_CHECKPOINT_DIR`; `<org>/<repo>` matched case-insensitively, as
the Hub does) or in the standard Hugging Face cache, downloading on first use unless offline.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .checkpoint import check_keys, read_header
from .errors import CheckpointError, InputError, MissingModelError

log = logging.getLogger(__name__)

# Name of the optional file in a checkpoint dir whose entries deep-merge into card configs
# (used by tiny test bundles whose dimensions differ from the released models).
OVERRIDES_FILE = "metis_config_overrides.json"

# Default model per task (spec §1.3: the released checkpoints).
DEFAULT_MODEL = {
    "tts": "maskgct-t2s",
    "vc": "metis-vc-lora16",
    "tse": "metis-tse-lora32",
    "se": "metis-se-lora32",
    "l2s": "metis-l2s",
}
ALIASES = {
    "metis-se": "metis-se-lora32",
    "metis-tse": "metis-tse-lora32",
    "metis-vc": "metis-vc-lora16",
    "metis-tts": "maskgct-t2s",
    "omni": "metis-omni",
}


def cards_dir() -> Path:
    """The folder of shipped cards: inside the wheel, or `models/` of a source checkout."""
    packaged = resources.files("metis_cli") / "model_cards"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "models"


@dataclass(frozen=True)
class FileSpec:
    role: str  # what the file is for inside its model ("stage1", "lora", "semantic_codec", ...)
    path: str  # path inside the repo
    size: str = ""  # approximate size as the Hub lists it (informational only)
    manifest: str | None = None  # expected safetensors header: models/manifests/<manifest>.txt
    local: bool = False  # the file lives in the card's own folder (fine-tuned models), not in `repo`


@dataclass(frozen=True)
class ModelCard:
    name: str
    description: str
    repo: str  # canonical Hub id, e.g. "amphion/MaskGCT"
    files: dict[str, FileSpec]
    config: dict[str, Any]  # architecture config blocks with the official key names
    task: str | None = None  # "tts", "vc", "tse", "se", "l2s", "omni" or None (components)
    requires: tuple[str, ...] = ()  # cards of the shared components the task needs
    stage1: dict[str, Any] = field(default_factory=dict)  # layout ("full"/"lora"), ft_type, lora_r/alpha
    decoding: dict[str, Any] = field(default_factory=dict)  # official stage-1/S2A defaults
    decoding_per_task: dict[str, dict[str, Any]] = field(default_factory=dict)  # omni
    license: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # other card fields (e.g. visual_encoder)
    local_dir: Path | None = None  # folder of a `card.json` (set on load): where `local` files live

    def decoding_for(self, task: str) -> dict[str, Any]:
        return self.decoding_per_task.get(task, self.decoding)

    @property
    def tasks(self) -> tuple[str, ...]:
        if self.task == "omni":
            return tuple(self.decoding_per_task)
        return (self.task,) if self.task else ()


def _card_from_dict(d: dict[str, Any], local_dir: Path | None = None) -> ModelCard:
    known = {"name", "description", "repo", "files", "config", "task", "requires", "stage1", "decoding"}
    known |= {"decoding_per_task", "license"}
    files = {role: FileSpec(role=role, **spec) for role, spec in d.get("files", {}).items()}
    return ModelCard(
        name=d["name"],
        description=d.get("description", ""),
        repo=d["repo"],
        files=files,
        config=d.get("config", {}),
        task=d.get("task"),
        requires=tuple(d.get("requires", ())),
        stage1=d.get("stage1", {}),
        decoding=d.get("decoding", {}),
        decoding_per_task=d.get("decoding_per_task", {}),
        license=d.get("license", ""),
        extra={k: v for k, v in d.items() if k not in known},
        local_dir=local_dir,
    )


@lru_cache(maxsize=1)
def _shipped_cards() -> dict[str, ModelCard]:
    cards = {}
    for p in sorted(cards_dir().glob("*.json")):
        card = _card_from_dict(json.loads(p.read_text()))
        cards[card.name] = card
    return cards


def card_names() -> list[str]:
    return sorted(_shipped_cards())


def get_card(name: str, model_dir: Path | None = None) -> ModelCard:
    """A shipped card by name or alias, or the card of a fine-tuned model folder (`DIR/card.json`)."""
    path = Path(name)
    if model_dir is None and (path / "card.json").is_file():
        d = json.loads((path / "card.json").read_text())
        return _card_from_dict(d, local_dir=path.resolve())
    cards = _shipped_cards()
    key = ALIASES.get(name, name)
    if key not in cards:
        raise InputError(
            f"unknown model '{name}' (known: {', '.join(card_names())}; or a fine-tuned model folder)"
        )
    return cards[key]


def manifest(name: str) -> dict[str, tuple[int, ...]]:
    """Expected {key: shape} of a full-size file, from `models/manifests/<name>.txt`."""
    out = {}
    for line in (cards_dir() / "manifests" / f"{name}.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape, _dtype = line.split("\t")
        out[key] = tuple(json.loads(shape))
    return out


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class ModelStore:
    """Finds (and fetches) the files of model cards.

    checkpoint_dir: local tree `<org>/<repo>/<path>`; when None, the Hugging Face cache is used.
    offline: never download (also set by `HF_HUB_OFFLINE=1`).
    """

    def __init__(self, checkpoint_dir: str | Path | None = None, offline: bool | None = None) -> None:
        env_dir = os.environ.get("METIS_CHECKPOINT_DIR")
        self.checkpoint_dir = (
            Path(checkpoint_dir or env_dir).expanduser() if (checkpoint_dir or env_dir) else None
        )
        if offline is None:
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        self.offline = offline
        self._overrides = self._read_overrides()

    # -- configuration ---------------------------------------------------------------------
    def _read_overrides(self) -> dict[str, Any]:
        if self.checkpoint_dir is None:
            return {}
        f = self.checkpoint_dir / OVERRIDES_FILE
        if not f.is_file():
            return {}
        log.info("using config overrides from %s (not the released model sizes)", f)
        return json.loads(f.read_text())

    def config(self, card: ModelCard) -> dict[str, Any]:
        """The card's architecture config with checkpoint-dir overrides applied."""
        return _deep_merge(card.config, self._overrides.get(card.name, {}))

    @property
    def has_overrides(self) -> bool:
        return bool(self._overrides)

    # -- locating files ----------------------------------------------------------------------
    def _local_repo_dir(self, repo: str) -> Path | None:
        assert self.checkpoint_dir is not None
        org, name = repo.split("/")
        direct = self.checkpoint_dir / org / name
        if direct.is_dir():
            return direct
        if not self.checkpoint_dir.is_dir():
            return None
        for o in self.checkpoint_dir.iterdir():
            if o.is_dir() and o.name.lower() == org.lower():
                for r in o.iterdir():
                    if r.is_dir() and r.name.lower() == name.lower():
                        return r
        return None

    def local_path(self, card: ModelCard, role: str) -> Path | None:
        """Where a file is on this machine, or None (never downloads)."""
        spec = card.files[role]
        if spec.local:
            p = card.local_dir / spec.path if card.local_dir is not None else None
            return p if p is not None and p.is_file() else None
        if self.checkpoint_dir is not None:
            repo_dir = self._local_repo_dir(card.repo)
            p = repo_dir / spec.path if repo_dir else None
            return p if p is not None and p.is_file() else None
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(card.repo, spec.path)
        except Exception:  # noqa: BLE001 - a broken cache is the same as a missing file here
            return None
        return Path(hit) if isinstance(hit, str) else None

    def path(self, card: ModelCard, role: str, progress: bool = True, hint: str | None = None) -> Path:
        """The local path of a card's file, downloading it into the HF cache if allowed.

        hint: the model to name in `metis download ...` advice (default: this card).
        """
        local = self.local_path(card, role)
        if local is not None:
            return local
        spec = card.files[role]
        if spec.local:
            raise MissingModelError(f"model '{card.name}': file {card.local_dir}/{spec.path} not found")
        where = f"{card.repo}/{spec.path}"
        if self.checkpoint_dir is not None:
            raise MissingModelError(
                f"model '{card.name}': file {where} not found under --checkpoint-dir {self.checkpoint_dir}"
            )
        if self.offline:
            raise MissingModelError(
                f"model '{card.name}': file {where} is not in the Hugging Face cache and downloads are off"
                f" (offline); run `metis download {hint or card.name}` or pass --checkpoint-dir"
            )
        return self._download(card, spec, progress, hint or card.name)

    def _download(self, card: ModelCard, spec: FileSpec, progress: bool, hint: str) -> Path:
        from huggingface_hub import hf_hub_download

        log.info("downloading %s/%s (%s)", card.repo, spec.path, spec.size or "size unknown")
        try:
            from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

            (enable_progress_bars if progress else disable_progress_bars)()
        except ImportError:  # pragma: no cover - very old huggingface_hub
            pass
        try:
            return Path(hf_hub_download(card.repo, spec.path))
        except Exception as exc:  # noqa: BLE001 - network, auth, 404: one line for the user
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MissingModelError(
                f"model '{card.name}': could not download {card.repo}/{spec.path} ({reason});"
                f" retry `metis download {hint}` or pass --checkpoint-dir"
            ) from None

    def verify(self, card: ModelCard, role: str, path: Path) -> None:
        """Check a file's safetensors header against the card's full-size manifest.

        Skipped (nothing to compare with) for files without a manifest and when config
        overrides are in effect; the strict load checks every key against the module anyway.
        """
        spec = card.files[role]
        if spec.manifest is None or self._overrides:
            return
        expected = manifest(spec.manifest)
        found = {k: shape for k, (_dtype, shape) in read_header(path).items()}
        tolerated = ["diff_estimator.embed_tokens.weight"]
        check_keys(expected, found, source=str(path), tolerated_extra=tolerated)
        bad = sorted(k for k, (dtype, _s) in read_header(path).items() if dtype not in ("F32", "F16", "BF16"))
        if bad:
            raise CheckpointError(f"{path}: unexpected dtype for {', '.join(bad[:5])}")

    def resolve_all(self, names: list[str], progress: bool = True) -> Iterator[tuple[ModelCard, str, Path]]:
        """Every file of the given cards and the cards they require, fetched if needed."""
        seen: set[tuple[str, str]] = set()
        for name in names:
            card = get_card(name)
            for dep in [get_card(r) for r in card.requires] + [card]:
                for role in dep.files:
                    if (dep.repo.lower(), dep.files[role].path) in seen:
                        continue
                    seen.add((dep.repo.lower(), dep.files[role].path))
                    yield dep, role, self.path(dep, role, progress=progress)


def file_status(store: ModelStore, card: ModelCard) -> list[dict[str, Any]]:
    """One row per file of a card: role, repo path, local path or None, size on disk."""
    rows = []
    for role, spec in card.files.items():
        p = store.local_path(card, role)
        rows.append(
            {
                "role": role,
                "file": f"{card.repo}/{spec.path}",
                "path": str(p) if p else None,
                "bytes": p.stat().st_size if p else None,
                "size_listed": spec.size,
            }
        )
    return rows

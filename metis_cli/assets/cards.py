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
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from metis_cli.assets.checkpoint import check_keys, read_header
from metis_cli.errors import CheckpointError, InputError, MissingModelError

log = logging.getLogger(__name__)

# Name of the optional file in a checkpoint dir whose entries deep-merge into card configs
# (used by tiny test bundles whose dimensions differ from the released models).
OVERRIDES_FILE = "metis_config_overrides.json"
OVERRIDES_NOTE = "sizes not compared (config overrides in effect; key names and tensor ranks checked)"

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


def env_offline() -> bool:
    """True when the environment turns downloads off (`HF_HUB_OFFLINE`, `TRANSFORMERS_OFFLINE`)."""
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_reason(exc: BaseException) -> str:
    """A short reason for a failed download (huggingface_hub's messages run to paragraphs)."""
    name = type(exc).__name__
    if name in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
        return "the file is not in the repository"
    if name in ("RepositoryNotFoundError", "GatedRepoError"):
        return "repository not found, private or gated (log in with `hf auth login`)"
    if name == "LocalEntryNotFoundError":
        return "no connection to the Hugging Face Hub, and the file is not in the cache"
    if name == "OfflineModeIsEnabled":
        return "offline mode is on (HF_HUB_OFFLINE)"
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else name


class _OncePerMessage(logging.Filter):
    """Lets each distinct message through once (digits ignored: "Retrying in 2s [Retry 2/5]")."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = re.sub(r"\d+", "#", record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


_ONCE = _OncePerMessage()


def quiet_hub(quiet: bool = True, offline: bool = False) -> None:
    """Tame huggingface_hub's console output for the CLI.

    quiet: no progress bars and no warnings (its retry messages: ~23 lines per run without a
    network), errors only; else each distinct warning is shown once. offline: also put the
    hub itself into offline mode (`HF_HUB_OFFLINE=1` for this process and what it starts), so
    that no library reaches the network. Safe to call more than once; imports the hub lazily.
    """
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants
        from huggingface_hub.utils import logging as hub_logging
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return
    if offline:
        hub_constants.HF_HUB_OFFLINE = True
    if quiet:
        hub_logging.set_verbosity_error()  # children inherit ERROR: warnings dropped at the source
        try:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        except ImportError:  # pragma: no cover
            pass
        return
    # a logger's filters only see records created on it: filter every hub logger that exists
    names = [n for n in logging.Logger.manager.loggerDict if n.split(".")[0] == "huggingface_hub"]
    for name in ["huggingface_hub", *names]:
        logger = logging.getLogger(name)
        logger.removeFilter(_ONCE)
        logger.addFilter(_ONCE)


def cards_dir() -> Path:
    """The folder of shipped cards: inside the wheel, or `models/` of a source checkout."""
    packaged = resources.files("metis_cli") / "model_cards"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "models"


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
        # HF_HUB_OFFLINE=1 always wins: offline means no network attempt at all
        self.offline = bool(offline) or env_offline()
        self._overrides = self._read_overrides()

    # -- configuration ---------------------------------------------------------------------
    def _read_overrides(self) -> dict[str, Any]:
        if self.checkpoint_dir is None:
            return {}
        f = self.checkpoint_dir / OVERRIDES_FILE
        if not f.is_file():
            return {}
        log.info("using config overrides from %s (not the released model sizes)", f)
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{f}: unreadable config overrides ({exc})") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise CheckpointError(f"{f}: config overrides must be a JSON object of {{card name: {{...}}}}")
        return data

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
            reason = _hub_reason(exc)
            raise MissingModelError(
                f"model '{card.name}': could not download {card.repo}/{spec.path} ({reason});"
                f" retry `metis download {hint}` or pass --checkpoint-dir"
            ) from None

    def verify(self, card: ModelCard, role: str, path: Path) -> list[str]:
        """Check a present file against what the card expects; returns notes on what was not
        checked (empty when everything was).

        Every safetensors file: its header parses and its data section is complete (no
        truncation, offsets consistent with dtypes and shapes). With a manifest: the keys and
        shapes are exactly the full-size ones; when config overrides are in effect (tiny test
        bundles) the key names are checked modulo layer/codebook indices and the number of
        dimensions of each tensor, and the sizes are not compared (said in the notes). JSON
        files must parse as a JSON object. Raises CheckpointError naming the file otherwise.
        """
        spec = card.files[role]
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: file not found")
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CheckpointError(f"{path}: not a readable JSON file ({exc})") from None
            if not isinstance(data, dict):
                raise CheckpointError(f"{path}: expected a JSON object")
            return ["JSON parsed, contents not compared"]
        header = safetensors_layout(path)
        found = {k: shape for k, (_dtype, shape) in header.items()}
        bad = sorted(k for k, (dtype, _s) in header.items() if dtype not in ("F32", "F16", "BF16"))
        if bad and spec.manifest is not None:
            raise CheckpointError(f"{path}: unexpected dtype for {', '.join(bad[:5])}")
        if spec.manifest is None:
            return ["no manifest for this file: header and data size checked, key names not compared"]
        expected = manifest(spec.manifest)
        tolerated = ["diff_estimator.embed_tokens.weight"]
        if not self._overrides:
            check_keys(expected, found, source=str(path), tolerated_extra=tolerated)
            return []
        _check_key_names(expected, found, source=str(path), tolerated_extra=tolerated)
        return [OVERRIDES_NOTE]

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


_ST_ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
_ST_ITEMSIZE |= {"F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


def safetensors_layout(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """`read_header(path)` after checking that the data section matches it.

    A truncated file (data shorter than the header says), trailing bytes, overlapping or
    mis-sized tensor ranges are `CheckpointError`s naming the file.
    """
    import struct

    path = Path(path)
    header = read_header(path)  # clear errors for files that are not safetensors at all
    size = path.stat().st_size
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        raw = json.loads(fh.read(n))
    raw.pop("__metadata__", None)
    spans = []
    for key, entry in raw.items():
        dtype, shape = header[key]
        try:
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: not a safetensors file (no data offsets for {key})") from None
        numel = 1
        for d in shape:
            numel *= d
        item = _ST_ITEMSIZE.get(dtype)
        if item is not None and end - begin != numel * item:
            raise CheckpointError(
                f"{path}: corrupt header: {key} spans {end - begin} bytes, "
                f"{dtype} {list(shape)} needs {numel * item}"
            )
        spans.append((begin, end, key))
    spans.sort()
    pos = 0
    for begin, end, key in spans:
        if begin < pos or end < begin:
            raise CheckpointError(f"{path}: corrupt header: the data of {key} overlaps another tensor")
        pos = end
    data_size = size - 8 - n
    if pos > data_size:
        raise CheckpointError(
            f"{path}: truncated: the header describes {pos} bytes of tensor data, "
            f"the file holds {max(data_size, 0)}"
        )
    if pos < data_size:
        raise CheckpointError(f"{path}: {data_size - pos} unexpected bytes after the tensor data")
    return header


_INDEX = re.compile(r"\.\d+(?=\.|$)")


def _check_key_names(
    expected: dict[str, tuple[int, ...]],
    found: dict[str, tuple[int, ...]],
    *,
    source: str,
    tolerated_extra: list[str],
) -> None:
    """Keys equal to the manifest's up to layer/codebook indices, and each tensor's rank equal."""

    def ranks(d: dict[str, tuple[int, ...]], skip: tuple[str, ...] = ()) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for k, shape in d.items():
            if k not in skip:
                out.setdefault(_INDEX.sub(".N", k), set()).add(len(shape))
        return out

    want, got = ranks(expected, tuple(tolerated_extra)), ranks(found, tuple(tolerated_extra))
    problems = []
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    rank = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing:
        problems.append(f"{len(missing)} missing key(s): {', '.join(missing[:5])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:5])}")
    if rank:
        shown = [f"{k} expected {sorted(want[k])}-d found {sorted(got[k])}-d" for k in rank[:5]]
        problems.append(f"{len(rank)} rank mismatch(es): {', '.join(shown)}")
    if not problems:  # every layer of a list holds the same keys where the manifest's layers do
        want_lists: dict[str, list[dict[int, set[str]]]] = {}
        for prefix, members in _lists(expected, tolerated_extra).items():
            want_lists.setdefault(_INDEX.sub(".N", prefix), []).append(members)
        for prefix, members in sorted(_lists(found, tolerated_extra).items()):
            norm = _INDEX.sub(".N", prefix)
            if len(members) < 2 or norm not in want_lists or not all(map(_uniform, want_lists[norm])):
                continue
            union = set().union(*members.values())
            for idx, rests in sorted(members.items()):
                if rests != union:
                    gone = sorted(union - rests)
                    shown = ", ".join(f"{prefix}{idx}{rest}" for rest in gone[:5])
                    problems.append(f"{len(gone)} missing key(s): {shown}")
                    break
            if problems:
                break
    if problems:
        raise CheckpointError(
            f"{source}: does not match the expected layout (N = any index): " + "; ".join(problems)
        )


def _lists(keys: dict[str, tuple[int, ...]], skip: list[str]) -> dict[str, dict[int, set[str]]]:
    """{list prefix "a.0.b.": {index: {normalized rest of the key}}} for every numbered list."""
    out: dict[str, dict[int, set[str]]] = {}
    for key in keys:
        if key in skip:
            continue
        for m in _INDEX.finditer(key):
            prefix, idx, rest = key[: m.start() + 1], int(m.group(0)[1:]), key[m.end() :]
            out.setdefault(prefix, {}).setdefault(idx, set()).add(_INDEX.sub(".N", rest))
    return out


def _uniform(members: dict[int, set[str]]) -> bool:
    sets = list(members.values())
    return all(x == sets[0] for x in sets)


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

"""Training data: examples on disk, a content-addressed feature cache, and token items.

Fine-tuning data (`se`, `tse`, `vc`) are triples of audio files:

* `input`  – what the model hears (noisy speech, a mixture, a source utterance);
* `target` – what it should produce (clean speech): its semantic tokens are x0;
* `prompt` – optional (tse: enrolment, vc: reference); it is prepended to both, as at
  inference, and its frames form the never-masked prompt.

A data set is a folder with `input/` (or `noisy/`) and `target/` (or `clean/`) and optionally
`prompt/` subfolders holding files of the same names, or a JSON-lines manifest with
`{"input": ..., "target": ..., "prompt": ...}` per line (paths relative to the manifest).
Pre-training data is a folder of audio files (searched recursively) or a text file of paths.

Features are computed once through the engine's tokenizers and stored under the cache
folder as `<sha256>.safetensors`, keyed by the bytes of the audio files and the identity of
the SSL model and semantic codec (file sizes, modification times and headers, and configs).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..cards import get_card
from ..errors import InputError

log = logging.getLogger(__name__)

AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg")
FOLDER_ROLES = {"input": ("input", "noisy"), "target": ("target", "clean"), "prompt": ("prompt",)}


@dataclass(frozen=True)
class Example:
    """One fine-tuning triple (prompt optional)."""

    input: Path
    target: Path
    prompt: Path | None = None


@dataclass
class Item:
    """Tokens (and condition) of one example, ready for batching."""

    x0: torch.Tensor  # (T,) int64 semantic tokens [prompt ; target]
    prompt_len: int  # leading frames never masked (0 without prompt)
    cond: torch.Tensor | None = None  # (T, D) float32 SSL features of [prompt ; input]

    def __len__(self) -> int:
        return int(self.x0.shape[0])


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTS)


def _role_dir(root: Path, role: str) -> Path | None:
    for name in FOLDER_ROLES[role]:
        if (root / name).is_dir():
            return root / name
    return None


def read_examples(path: Path) -> list[Example]:
    """Fine-tuning examples of a data folder or JSON-lines manifest (see the module doc)."""
    path = Path(path)
    if path.is_file():
        out = []
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                ex = Example(
                    input=path.parent / d["input"],
                    target=path.parent / d["target"],
                    prompt=path.parent / d["prompt"] if d.get("prompt") else None,
                )
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InputError(f"{path}: line {n} is not an input/target JSON object ({exc})") from None
            out.append(ex)
    elif path.is_dir():
        inp, tgt, prm = (_role_dir(path, r) for r in ("input", "target", "prompt"))
        if inp is None or tgt is None:
            raise InputError(f"{path}: needs input/ (or noisy/) and target/ (or clean/) subfolders")
        out = []
        for f in _audio_files(inp):
            rel = f.relative_to(inp)
            if not (tgt / rel).is_file():
                raise InputError(f"{f}: no target file {tgt / rel}")
            if prm is not None and not (prm / rel).is_file():
                raise InputError(f"{f}: no prompt file {prm / rel}")
            out.append(Example(f, tgt / rel, prm / rel if prm is not None else None))
    else:
        raise InputError(f"{path}: no such data folder or manifest")
    for ex in out:
        for p in (ex.input, ex.target, ex.prompt):
            if p is not None and not p.is_file():
                raise InputError(f"{path}: audio file {p} does not exist")
    if not out:
        raise InputError(f"{path}: no training examples found")
    return out


def read_audio_list(path: Path) -> list[Path]:
    """Pre-training audio: every audio file under a folder, or the paths listed in a text file."""
    path = Path(path)
    if path.is_dir():
        files = _audio_files(path)
    elif path.is_file():
        files = [path.parent / ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise InputError(f"{path}: audio file {missing[0]} does not exist")
    else:
        raise InputError(f"{path}: no such audio folder or list file")
    if not files:
        raise InputError(f"{path}: no audio files found")
    return files


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_identity(path: Path) -> dict:
    st = path.stat()
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    return {
        "name": path.name,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "head": hashlib.sha256(head).hexdigest(),
    }


class FeatureCache:
    """SSL features and semantic codes of (concatenated) audio files, computed once.

    engine: an `Engine` whose tokenizers give `ssl_features` and `semantic_codes`.
    root: cache folder (created).
    """

    def __init__(self, engine, root: Path) -> None:
        self.engine = engine
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._identity: str | None = None
        self._sha: dict[Path, str] = {}
        self.hits = 0
        self.misses = 0

    @property
    def identity(self) -> str:
        """Hash naming the SSL model and semantic codec (their files and configs)."""
        if self._identity is None:
            store = self.engine.store
            ident = {}
            parts = (("w2v-bert-2.0", ("weights", "config")), ("maskgct-codecs", ("semantic_codec",)))
            for name, roles in parts:
                card = get_card(name)
                ident[name] = {
                    "files": [_file_identity(store.path(card, r)) for r in roles],
                    "config": store.config(card),
                }
            blob = json.dumps(ident, sort_keys=True).encode()
            self._identity = hashlib.sha256(blob).hexdigest()
        return self._identity

    def _key(self, kind: str, files: Sequence[Path]) -> str:
        parts = [self.identity, kind]
        for f in files:
            f = Path(f).resolve()
            if f not in self._sha:
                self._sha[f] = _file_sha(f)
            parts.append(self._sha[f])
        return hashlib.sha256("/".join(parts).encode()).hexdigest()

    def _compute_ssl(self, files: Sequence[Path]) -> torch.Tensor:
        tok = self.engine.tokenizers
        wav = np.concatenate([tok.load16(Path(f)) for f in files])
        return tok.ssl_features(wav, what=str(files[-1])).float().cpu().clone()

    def _get(self, kind: str, files: Sequence[Path]) -> torch.Tensor:
        path = self.root / f"{self._key(kind, files)}.safetensors"
        if path.is_file():
            self.hits += 1
            return load_file(str(path))["x"]
        self.misses += 1
        feat = self._compute_ssl(files)
        if kind == "ssl":
            x = feat
        else:
            x = self.engine.tokenizers.semantic_codes(feat).to(torch.long).cpu().clone()
        tmp = path.with_suffix(".tmp")
        save_file({"x": x.contiguous()}, str(tmp))
        tmp.replace(path)
        return x

    def ssl(self, files: Sequence[Path]) -> torch.Tensor:
        """(T, D) float32 SSL features of the files' 16 kHz waveforms, concatenated."""
        return self._get("ssl", files)

    def codes(self, files: Sequence[Path]) -> torch.Tensor:
        """(T,) int64 semantic codes of the files' concatenated waveforms."""
        return self._get("codes", files)


def finetune_item(cache: FeatureCache, ex: Example) -> Item:
    """x0 = [codes(prompt) ; codes(target)], cond = SSL([prompt ; input]), trimmed to one length."""
    prompt = cache.codes([ex.prompt]) if ex.prompt is not None else torch.zeros(0, dtype=torch.long)
    x0 = torch.cat([prompt, cache.codes([ex.target])])
    cond = cache.ssl([ex.prompt, ex.input] if ex.prompt is not None else [ex.input])
    n = min(len(x0), len(cond))
    if n <= len(prompt):
        raise InputError(f"{ex.input}: too short to leave a target frame after the prompt")
    return Item(x0=x0[:n], prompt_len=len(prompt), cond=cond[:n])


def pretrain_item(cache: FeatureCache, path: Path) -> Item:
    """x0 = semantic codes of one file; prompt lengths are drawn during training."""
    return Item(x0=cache.codes([path]), prompt_len=0)

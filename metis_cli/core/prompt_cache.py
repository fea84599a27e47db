"""Speaker prompts encoded once: semantic codes, acoustic codes and 16 kHz samples per prompt.

A speaker prompt (the TTS prompt, the VC reference, the TSE enrolment, the L2S prompt) costs a
w2v-BERT forward, a semantic-codec quantisation and an acoustic-codec encoding every time it is
used. `PromptCache` keeps those results, keyed by the prompt's content hash (the file's bytes,
or an in-memory array's samples and rate) and the scope that made them (model card, dtype,
device): the same content under the same scope gives the same codes, so a hit returns exactly
what recomputing would (the encodings are deterministic; the RNG draws that the official
pipeline makes per w2v-BERT forward are counted by the job, not by the forwards made here).

Entries live in a bounded LRU. Pinned hashes (registered voices) are never evicted, and with a
`persist_dir` their encodings are also written there as safetensors (one file per hash and
scope) and read back after a restart.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metis_cli.media import audio

log = logging.getLogger(__name__)

DEFAULT_ENTRIES = 64  # unpinned prompts kept in memory (about 2 MB each for a 30 s prompt)
DEFAULT_BYTES = 256 << 20  # and at most this many bytes of them
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class PromptEncoding:
    """One prompt's encodings: (Lp,) int64 semantic codes, (Lp_ac, 12) int64 acoustic codes and
    its (N,) float32 16 kHz samples (VC/TSE concatenate them with the source)."""

    semantic: torch.Tensor
    acoustic: torch.Tensor
    wav16: np.ndarray

    @property
    def nbytes(self) -> int:
        tensors = (self.semantic, self.acoustic)
        return int(self.wav16.nbytes) + sum(t.numel() * t.element_size() for t in tensors)


def content_hash(source: Any) -> str | None:
    """sha256 of a prompt's content: a file's bytes, or an `AudioArray`'s samples, shape, dtype
    and rate. None when the file cannot be read (the encoder then reports the error)."""
    digest = hashlib.sha256()
    if isinstance(source, (str, os.PathLike)) and audio.is_stream(source):
        source = audio.read_stream(source)  # a pipe was read into memory once: never open it again
    samples = getattr(source, "samples", None)
    if samples is not None:
        arr = np.ascontiguousarray(samples)
        digest.update(f"array:{arr.dtype.str}:{arr.shape}:{int(source.sample_rate)}:".encode())
        digest.update(arr.tobytes())
        return digest.hexdigest()
    try:
        with open(source, "rb") as f:
            digest.update(b"file:")
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except (OSError, TypeError):
        return None
    return digest.hexdigest()


class PromptCache:
    """A thread-safe LRU of `PromptEncoding`s keyed by (content hash, scope).

    max_entries, max_bytes: bounds of the unpinned entries (0 entries: none are kept).
    persist_dir: where pinned entries are stored as `<hash>.<scope>.safetensors` (None: memory only).
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_ENTRIES,
        persist_dir: Path | None = None,
        max_bytes: int = DEFAULT_BYTES,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.persist_dir = persist_dir
        self.hits = 0
        self.misses = 0
        self.on_event: Callable[[str], None] | None = None  # gets "hit" / "miss" (metrics)
        self._entries: OrderedDict[tuple[str, str], PromptEncoding] = OrderedDict()
        self._pinned: set[str] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def pin(self, digest: str) -> None:
        """Keep this content's encodings for good (and on disk, with a persist_dir)."""
        with self._lock:
            self._pinned.add(digest)

    def unpin(self, digest: str) -> None:
        """Forget a pinned content (a deleted voice): memory entries and persisted files."""
        with self._lock:
            self._pinned.discard(digest)
            for key in [k for k in self._entries if k[0] == digest]:
                del self._entries[key]
        if self.persist_dir is not None:
            for path in self.persist_dir.glob(f"{digest}.*.safetensors"):
                path.unlink(missing_ok=True)

    def get_or_encode(self, source: Any, scope: str, encode: Callable[[], PromptEncoding]) -> PromptEncoding:
        """The cached encoding of `source` under `scope`, else `encode()` (then cached)."""
        digest = content_hash(source)
        if digest is None:
            return encode()
        key = (digest, scope)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
        if hit is None and digest in self._pinned:
            hit = self._load(digest, scope)
            if hit is not None:
                self._store(key, hit)
        if hit is not None:
            self._count("hit")
            return hit
        self._count("miss")
        enc = encode()
        enc = PromptEncoding(enc.semantic.detach().clone(), enc.acoustic.detach().clone(), enc.wav16.copy())
        self._store(key, enc)
        if digest in self._pinned:
            self._save(digest, scope, enc)
        return enc

    def _count(self, event: str) -> None:
        with self._lock:
            if event == "hit":
                self.hits += 1
            else:
                self.misses += 1
        if self.on_event is not None:
            self.on_event(event)

    def _store(self, key: tuple[str, str], enc: PromptEncoding) -> None:
        with self._lock:
            self._entries[key] = enc
            self._entries.move_to_end(key)
            unpinned = [k for k in self._entries if k[0] not in self._pinned]  # oldest first
            size = sum(self._entries[k].nbytes for k in unpinned)
            while unpinned and (len(unpinned) > self.max_entries or size > self.max_bytes):
                size -= self._entries.pop(unpinned.pop(0)).nbytes

    def _path(self, digest: str, scope: str) -> Path:
        assert self.persist_dir is not None
        return self.persist_dir / f"{digest}.{_SAFE.sub('_', scope)}.safetensors"

    def _save(self, digest: str, scope: str, enc: PromptEncoding) -> None:
        if self.persist_dir is None:
            return
        from safetensors.torch import save_file

        path = self._path(digest, scope)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tensors = {
            "semantic": enc.semantic.cpu().contiguous(),
            "acoustic": enc.acoustic.cpu().contiguous(),
            "wav16": torch.from_numpy(np.ascontiguousarray(enc.wav16)),
        }
        try:
            save_file(tensors, str(tmp), metadata={"scope": scope, "sha256": digest})
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("%s: could not persist a prompt encoding (%s)", path, exc)
            tmp.unlink(missing_ok=True)

    def _load(self, digest: str, scope: str) -> PromptEncoding | None:
        if self.persist_dir is None:
            return None
        path = self._path(digest, scope)
        if not path.is_file():
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            t = load_file(str(path))
            return PromptEncoding(t["semantic"], t["acoustic"], t["wav16"].numpy())
        except (OSError, KeyError, SafetensorError) as exc:
            log.warning("%s: unreadable prompt encoding, recomputing (%s)", path, exc)
            return None

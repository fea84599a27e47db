"""Sentence splitting for long texts: pieces of at most N characters at sentence boundaries.

Used by the long-text TTS path (one piece per generation) and by streaming (one piece per chunk).
"""

from __future__ import annotations

import re

import numpy as np

_CLOSERS = "\"'”’」』)）"
_SENTENCE = re.compile(rf"[^\n]+?(?:[.!?;…]+[{_CLOSERS}]*(?=\s|$)|[。！？；]+[{_CLOSERS}]*|(?=\n)|$)", re.S)
_CLAUSE_END = re.compile(r"(?<=[,:，、：])\s*")


def _pack(parts: list[str], max_chars: int, joiner: str) -> list[str]:
    """Greedy packing; no joiner after CJK / full-width characters (they use no spaces)."""
    out: list[str] = []
    for p in parts:
        j = "" if out and ord(out[-1][-1]) >= 0x2E80 else joiner
        if out and len(out[-1]) + len(j) + len(p) <= max_chars:
            out[-1] = out[-1] + j + p
        else:
            out.append(p)
    return out


def _split_long(sentence: str, max_chars: int) -> list[str]:
    """A sentence over max_chars: at clause marks, then spaces, then hard cuts."""
    if len(sentence) <= max_chars:
        return [sentence]
    pieces: list[str] = []
    for clause in _pack([c for c in _CLAUSE_END.split(sentence) if c], max_chars, " "):
        if len(clause) <= max_chars:
            pieces.append(clause)
            continue
        words = clause.split(" ")
        for w in _pack(words, max_chars, " "):
            pieces.extend(w[i : i + max_chars] for i in range(0, len(w), max_chars))
    return pieces


def split_text(text: str, max_chars: int) -> list[str]:
    """Split text into pieces of at most max_chars characters at sentence boundaries.

    Sentences (ended by . ! ? ; … and their CJK forms, or a line break) are packed greedily;
    a single sentence longer than max_chars is cut at clause marks, then at spaces, then hard.
    Joining the pieces with single spaces gives the text back up to whitespace.
    """
    sentences = [s.strip() for s in _SENTENCE.findall(text.strip()) if s.strip()]
    pieces: list[str] = []
    for s in sentences:
        pieces.extend(p.strip() for p in _split_long(s, max_chars) if p.strip())
    return _pack(pieces, max_chars, " ")


def stream_pieces(text: str, max_chars: int) -> list[str]:
    """The pieces of a streamed text: its first sentence on its own (so the first audio comes
    soon), then the rest packed like `split_text` (pieces of at most max_chars characters)."""
    sentences = [s.strip() for s in _SENTENCE.findall(text.strip()) if s.strip()]
    pieces: list[str] = []
    for s in sentences:
        pieces.extend(p.strip() for p in _split_long(s, max_chars) if p.strip())
    return pieces[:1] + _pack(pieces[1:], max_chars, " ")


def split_duration(total_seconds: float, pieces: list[str]) -> list[float]:
    """A given total duration shared among pieces by UTF-8 bytes (the length rule's measure)."""
    sizes = np.array([len(p.encode("utf-8")) for p in pieces], dtype=np.float64)
    return list(total_seconds * sizes / sizes.sum())

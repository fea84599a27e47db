"""The official mixed Chinese/English path used for both ``zh`` and ``en`` (spec §9.3)."""

from __future__ import annotations

from metis_cli.errors import TextError
from metis_cli.text.vocab import phones_to_ids


def char_class(ch: str) -> str:
    """``zh`` for U+4E00-U+9FA5, ``en`` for ASCII letters, else ``other``."""
    if "\u4e00" <= ch <= "\u9fa5":
        return "zh"
    if ("a" <= ch <= "z") or ("A" <= ch <= "Z"):
        return "en"
    return "other"


def split_runs(text: str) -> list[tuple[str, str]]:
    """Split into alternating zh/en runs; ``other`` characters join the surrounding run."""
    runs: list[list[str]] = []
    for ch in text:
        cls = char_class(ch)
        if not runs:
            runs.append([cls, ch])
        elif runs[-1][0] == "other":
            runs[-1][1] += ch
            runs[-1][0] = cls
        elif cls in (runs[-1][0], "other"):
            runs[-1][1] += ch
        else:
            runs.append([cls, ch])
    return [(cls, chunk) for cls, chunk in runs]


def mixed_g2p(text: str) -> tuple[str, list[int]]:
    """Phones and ids of a text through the mixed zh/en path."""
    runs = split_runs(text)
    if not runs:
        raise TextError("empty text: nothing to phonemise")
    phones = ""
    for lang, chunk in runs:
        if lang == "zh":
            from metis_cli.text.chinese import chinese_phones

            phones += chinese_phones(chunk) + "|"
        elif lang == "en":
            from metis_cli.text.english import english_phones

            phones += english_phones(chunk) + "|"
        else:
            raise TextError(f"text {text[:40]!r} has no letters or Chinese characters to phonemise")
    if runs[-1][0] == "en" and len(phones) >= 2 and phones[-2] == "_":
        phones = phones[:-2] + phones[-1]
    return phones, phones_to_ids(phones)

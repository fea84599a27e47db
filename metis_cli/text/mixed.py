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
    """Phones and ids of a text through the mixed zh/en path.

    Each run's phone string is followed by ``|`` and its ids are appended. When the last run is
    English and its phones end with the word boundary ``_`` (``...|_|`` once joined), the last two
    characters ``_|`` are cut and the last id (that ``_``) dropped: the string then ends with a
    single ``|`` (``h|aɪ|``), never a doubled one.
    """
    if not text.strip():
        raise TextError("empty text: nothing to phonemise")
    runs = split_runs(text)
    phones = ""
    ids: list[int] = []
    for index, (lang, chunk) in enumerate(runs):
        if lang == "zh":
            from metis_cli.text.chinese import chinese_phones

            run_phones = chinese_phones(chunk)
        elif lang == "en":
            from metis_cli.text.english import english_phones

            run_phones = english_phones(chunk)
        else:
            raise TextError(f"text {text[:40]!r} has no letters or Chinese characters to phonemise")
        phones += run_phones + "|"
        ids += phones_to_ids(run_phones)
        if lang == "en" and index == len(runs) - 1 and phones[-2:-1] == "_":
            phones = phones[:-2]
            ids = ids[:-1]
    return phones, ids

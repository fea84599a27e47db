"""English: abbreviations, numbers, espeak ``en-us`` and the official post-mapping (spec §9.4)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from metis_cli.errors import TextError
from metis_cli.text.espeak import phonemise

_ABBREVIATIONS = [
    ("mrs", "misess"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"), ("co", "company"),
    ("jr", "junior"), ("maj", "major"), ("gen", "general"), ("drs", "doctors"), ("rev", "reverend"),
    ("lt", "lieutenant"), ("hon", "honorable"), ("sgt", "sergeant"), ("capt", "captain"),
    ("esq", "esquire"), ("ltd", "limited"), ("col", "colonel"), ("ft", "fort"), ("etc", "et cetera"),
    ("btw", "by the way"),
]  # fmt: skip
_ABBREVIATION_RES = [(re.compile(rf"\b{a}\b", re.IGNORECASE), b) for a, b in _ABBREVIATIONS]

_COMMA_NUMBER = re.compile(r"([0-9][0-9,]+[0-9])")
_POUNDS = re.compile(r"£([0-9,]*[0-9]+)")
_DOLLARS = re.compile(r"\$([0-9.,]*[0-9]+)")
_FRACTION = re.compile(r"([0-9]+)/([0-9]+)")
_DECIMAL = re.compile(r"([0-9]+\.[0-9]+)")
_PERCENT = re.compile(r"([0-9.,]*[0-9]+%)")
_ORDINAL = re.compile(r"[0-9]+(st|nd|rd|th)")
_NUMBER = re.compile(r"[0-9]+")

# Final characters after which the official converter appends a word boundary.
_BOUNDARY_FINALS = set("p⁼ʰmftnlkxʃsɹaoəɛɪeɑʊŋiuɥwæjː`")

_POST_MAP = [
    ("t|ɹ", "tɹ"), ("d|ɹ", "dɹ"), ("t|s", "ts"), ("d|z", "dz"), ("ɪ|ɹ", "ɪɹ"), ("ɐ", "ɚ"), ("ᵻ", "ɪ"),
    ("əl", "l"), ("x", "k"), ("ɬ", "l"), ("ʔ", "t"), ("n̩", "n"), ("oː|ɹ", "oːɹ"),
]  # fmt: skip
_POST_MAP_RES = [(re.compile(r"(?:^|(?<=[|_]))" + re.escape(a) + r"(?=[|_]|$)"), b) for a, b in _POST_MAP]


@lru_cache(maxsize=1)
def _inflect() -> Any:
    import inflect

    return inflect.engine()


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


def _dollars(m: re.Match[str]) -> str:
    parts = m.group(1).split(".")
    if len(parts) > 2:
        return f" {m.group(1)} dollars "
    try:
        dollars = int(parts[0]) if parts[0] else 0
        cents = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    except ValueError:  # e.g. "$,5": the official code raises here too
        raise TextError(f"cannot read the amount ${m.group(1)} (official: int() fails)") from None
    if dollars and cents:
        return f" {_plural(dollars, 'dollar')}, {_plural(cents, 'cent')} "
    if dollars:
        return f" {_plural(dollars, 'dollar')} "
    if cents:
        return f" {_plural(cents, 'cent')} "
    return " zero dollars "


def _fraction(m: re.Match[str]) -> str:
    """``a/b`` in words. The numerator is spelled by ``number_to_words`` with its defaults
    (``and``, commas), not by the integer rule: 1999/3 reads "one thousand, nine hundred and
    ninety-nine third", not "nineteen ninety-nine third" (official)."""
    num, den = int(m.group(1)), int(m.group(2))
    eng = _inflect()
    if num == 1 and den == 2:
        return " one half "
    if num == 1 and den == 4:
        return " one quarter "
    if den == 2:
        return f" {eng.number_to_words(num)} halves "
    if den == 4:
        return f" {eng.number_to_words(num)} quarters "
    return f" {eng.number_to_words(num)} {eng.ordinal(eng.number_to_words(den))} "


def _number(m: re.Match[str]) -> str:
    n = int(m.group(0))
    eng = _inflect()
    if 1000 < n < 3000:
        if n == 2000:
            return " two thousand "
        if 2000 < n < 2010:
            return " two thousand " + eng.number_to_words(n % 100) + " "
        if n % 100 == 0:
            return " " + eng.number_to_words(n // 100) + " hundred "
        return " " + eng.number_to_words(n, andword="", zero="oh", group=2).replace(", ", " ") + " "
    return " " + eng.number_to_words(n, andword="") + " "


def normalise_numbers(text: str) -> str:
    """Spell out money, fractions, decimals, percentages, ordinals and integers."""
    text = _COMMA_NUMBER.sub(lambda m: m.group(1).replace(",", ""), text)
    text = _POUNDS.sub(r"\1 pounds", text)
    text = _DOLLARS.sub(_dollars, text)
    text = _FRACTION.sub(_fraction, text)
    # Not padded: "3.5%" must stay "3 point 5%" so that the percent rule still sees a number.
    text = _DECIMAL.sub(lambda m: m.group(1).replace(".", " point "), text)
    text = _PERCENT.sub(lambda m: m.group(1).replace("%", " percent "), text)
    text = _ORDINAL.sub(lambda m: " " + _inflect().number_to_words(m.group(0)) + " ", text)
    return _NUMBER.sub(_number, text)


def normalise(text: str) -> str:
    """Expand abbreviations and numbers (before espeak)."""
    for pattern, expansion in _ABBREVIATION_RES:
        text = pattern.sub(expansion, text)
    return normalise_numbers(text)


def post_map(phones: str) -> str:
    """Apply the official token rewrites, each until it no longer matches."""
    for pattern, repl in _POST_MAP_RES:
        while True:
            phones, n = pattern.subn(repl, phones)
            if n == 0:
                break
    return phones


def english_phones(text: str) -> str:
    """Phone string of an English run (may end with ``|_``, removed by the mixed path)."""
    phones = phonemise(normalise(text), "en")
    if phones and phones[-1] in _BOUNDARY_FINALS:
        phones += "|_"
    return post_map(phones)

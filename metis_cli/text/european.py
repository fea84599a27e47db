"""French and German cleaners before espeak ``fr-fr`` / ``de`` (spec §9.4)."""

from __future__ import annotations

import re

from metis_cli.text.espeak import phonemise

# (abbreviation used as a regular expression, expansion); matched as \b + abbr + literal period.
_FR_ABBREVIATIONS = [
    ("M", "monsieur"), ("Mlle", "mademoiselle"), ("Mlles", "mesdemoiselles"), ("Mme", "Madame"),
    ("Mmes", "Mesdames"), ("N.B", "nota bene"), ("M", "monsieur"), ("p.c.q", "parce que"),
    ("Pr", "professeur"), ("qqch", "quelque chose"), ("rdv", "rendez-vous"), ("max", "maximum"),
    ("min", "minimum"), ("no", "numéro"), ("adr", "adresse"), ("dr", "docteur"), ("st", "saint"),
    ("co", "companie"), ("jr", "junior"), ("sgt", "sergent"), ("capt", "capitain"), ("col", "colonel"),
    ("av", "avenue"), ("av. J.-C", "avant Jésus-Christ"), ("apr. J.-C", "après Jésus-Christ"),
    ("art", "article"), ("boul", "boulevard"), ("c.-à-d", "c’est-à-dire"), ("etc", "et cetera"),
    ("ex", "exemple"), ("excl", "exclusivement"), ("boul", "boulevard"),
]  # fmt: skip
_FR_ABBREVIATION_RES = [(re.compile(rf"\b{a}\.", re.IGNORECASE), b) for a, b in _FR_ABBREVIATIONS]
# Then case-sensitively, without a period, but still after a word boundary (\bMlle).
_FR_BARE = [
    (re.compile(rf"\b{a}"), b)
    for a, b in [
        ("Mlle", "mademoiselle"),
        ("Mlles", "mesdemoiselles"),
        ("Mme", "Madame"),
        ("Mmes", "Mesdames"),
    ]  # fmt: skip
]

_PUNCTUATION_MAP = {
    "：": ",", "；": ",", "，": ",", "·": ",", "、": ",",
    "。": ".", "...": ".", "…": ".", "$": ".", "\n": ".",
    "！": "!", "？": "?", "～": "-", "~": "-",
}  # fmt: skip
_DELETED = "“”‘’（）()《》【】[]—「」¿¡"
_PUNCTUATION_RE = re.compile(
    "|".join(re.escape(k) for k in sorted(_PUNCTUATION_MAP, key=len, reverse=True))
    + "|["
    + re.escape(_DELETED)
    + "]"
)
_LATE_DELETED = re.compile(r'[<>()\[\]"«»]')
_LEADING_MARKS = re.compile(r"^[,.!?]+")
_WHITESPACE = re.compile(r"\s+")


def _punctuation(text: str, ampersand: bool) -> str:
    text = _PUNCTUATION_RE.sub(lambda m: _PUNCTUATION_MAP.get(m.group(0), ""), text)
    text = text.replace(";", ",").replace("-", " ").replace(":", ",")
    if ampersand:
        text = text.replace("&", " et ")
    text = _LATE_DELETED.sub("", text)
    text = _LEADING_MARKS.sub("", text)
    return _WHITESPACE.sub(" ", text).strip()


def french_normalise(text: str) -> str:
    """Expand French abbreviations and rewrite punctuation."""
    for pattern, expansion in _FR_ABBREVIATION_RES:
        text = pattern.sub(expansion, text)
    for pattern, expansion in _FR_BARE:
        text = pattern.sub(expansion, text)
    return _punctuation(text, ampersand=True)


def german_normalise(text: str) -> str:
    """Rewrite German punctuation (no abbreviation expansion in the official code)."""
    return _punctuation(text, ampersand=False)


def french_phones(text: str) -> str:
    """Phone string of a French text."""
    return phonemise(french_normalise(text), "fr")


def german_phones(text: str) -> str:
    """Phone string of a German text."""
    return phonemise(german_normalise(text), "de")

"""espeak-ng through phonemizer: library selection and the common phonemiser (spec §9.4).

The system ``libespeak-ng`` (Debian 1.51, closest to the training data) is used when present,
otherwise the library and data bundled in the ``espeakng-loader`` wheel (espeak-ng 1.52).
``METIS_ESPEAK=system|bundled`` forces one of them (one library per process: phonemizer binds
the first one it loads).
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import re
from functools import cache, lru_cache
from typing import Any

from metis_cli.errors import TextError
from metis_cli.text.vocab import MARKS

log = logging.getLogger(__name__)


class _NoWordCountAlarm(logging.Filter):
    """Drops phonemizer's "words count mismatch on N% of the lines" summary, a false alarm here.

    phonemizer counts the words of each input line (split on spaces) and of its output (split on
    the word separator) and, in its "ignore" mode, only logs that summary: the phones are never
    changed. The counts differ by design for our input: with `preserve_punctuation` phonemizer
    cuts each line at the marks and phonemises the pieces separately, and espeak-ng itself joins
    or splits words (numbers and abbreviations it expands, clitics, a word glued to a mark). So
    the warning fired on nearly every English job without anything being wrong. Every other
    phonemizer message still reaches the log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("words count mismatch")


# the logger phonemizer's backends report to (its messages, less the false alarm above)
phonemizer_log = logging.getLogger("phonemizer.metis")
phonemizer_log.addFilter(_NoWordCountAlarm())

VOICES = {"en": "en-us", "fr": "fr-fr", "de": "de", "ko": "ko"}

_FULLWIDTH = [
    ("，", ","), ("。", "."), ("！", "!"), ("？", "?"), ("；", ";"), ("：", ":"), ("、", ","),
    ("‘", "'"), ("’", "'"), ("⋯", "…"), ("···", "…"), ("・・・", "…"), ("...", "…"),
]  # fmt: skip
_MARK_CLASS = "[" + re.escape(MARKS) + "]"
_NOT_KEPT = re.compile(r"[^\w\s_" + re.escape(MARKS) + "]")
_SPACE_AROUND_MARK = re.compile(r"\s*(" + _MARK_CLASS + r")\s*")
_WHITESPACE = re.compile(r"\s+")
_MARK = re.compile("(" + _MARK_CLASS + ")")
_BARS = re.compile(r"\|+")


def _system_library() -> str | None:
    override = os.environ.get("PHONEMIZER_ESPEAK_LIBRARY")
    if override:
        return override
    return ctypes.util.find_library("espeak-ng")


def _choose_backend() -> tuple[str, str, str | None]:
    """Return ``(backend, library_path, data_path)``; backend is ``system`` or ``bundled``."""
    wanted = os.environ.get("METIS_ESPEAK", "auto").lower()
    if wanted not in ("auto", "system", "bundled"):
        raise TextError(f"METIS_ESPEAK={wanted!r}: expected auto, system or bundled")
    system = _system_library()
    if wanted == "system" or (wanted == "auto" and system):
        if not system:
            raise TextError("METIS_ESPEAK=system but no libespeak-ng is installed (apt install espeak-ng)")
        return "system", system, None
    try:
        import espeakng_loader
    except ImportError as exc:
        raise TextError(
            "no espeak-ng library: install the system package (espeak-ng) or `pip install espeakng-loader`"
        ) from exc
    return "bundled", espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


@lru_cache(maxsize=1)
def _configure() -> tuple[str, str]:
    """Point phonemizer at the chosen library once per process; return (backend, library)."""
    backend, library, data = _choose_backend()
    from phonemizer.backend.espeak.wrapper import EspeakWrapper

    if data is not None:
        # phonemizer 3.3 has no set_data_path: libespeak-ng reads this variable itself.
        os.environ["ESPEAK_DATA_PATH"] = data
        if hasattr(EspeakWrapper, "set_data_path"):
            EspeakWrapper.set_data_path(data)
    EspeakWrapper.set_library(library)
    log.debug("espeak-ng backend %s: %s", backend, library)
    return backend, library


@cache
def _backend(language: str) -> Any:
    _configure()
    from phonemizer.backend import EspeakBackend

    try:
        return EspeakBackend(
            VOICES[language],
            punctuation_marks=MARKS,
            preserve_punctuation=True,
            with_stress=False,
            tie=False,
            language_switch="remove-flags",
            words_mismatch="ignore",
            logger=phonemizer_log,
        )
    except RuntimeError as exc:
        raise TextError(f"espeak-ng cannot load voice {VOICES[language]!r}: {exc}") from exc


def espeak_info() -> dict[str, str]:
    """Describe the espeak-ng stack in use: library path, versions and backend kind."""
    from importlib.metadata import version

    backend, library = _configure()
    from phonemizer.backend import EspeakBackend

    return {
        "backend": backend,
        "library": library,
        "espeak_ng": ".".join(str(v) for v in EspeakBackend.version()),
        "phonemizer": version("phonemizer"),
    }


def normalise(line: str) -> str:
    """Steps 1-3 of the common phonemiser for one line: full-width marks, deletions, spacing."""
    line = line.strip()
    for src, dst in _FULLWIDTH:
        line = line.replace(src, dst)
    line = _NOT_KEPT.sub("", line)
    line = _SPACE_AROUND_MARK.sub(r"\1", line)
    return _WHITESPACE.sub(" ", line)


def split_lines(text: str) -> list[str]:
    """The lines phonemizer's ``str2list`` makes: newlines stripped at both ends, then split."""
    return text.strip("\n").split("\n")


def phonemise(text: str, language: str) -> str:
    """Run the common phonemiser of spec §9.4 (steps 1-5) on ``text`` with an espeak voice.

    As the official tokenizer: the text is split into lines first (``split_lines``), each line is
    normalised and phonemised on its own, and the lines' phones are joined with a newline (so a
    mark next to a line break never merges the two lines).
    """
    from phonemizer.separator import Separator

    lines = [normalise(line) for line in split_lines(text)]
    separator = Separator(phone="|", syllable="-", word="|_|")
    phonemised = _backend(language).phonemize(lines, separator=separator, strip=True, njobs=1)
    phones = "\n".join(phonemised)
    phones = _MARK.sub(r"|\1|", phones)
    return _BARS.sub("|", phones).rstrip("|")

"""TTS text front end: text → official phone string and phone ids (spec §9).

Languages load lazily: English never imports the Chinese or Japanese stacks.

Public API: :func:`g2p` (the official front end), :func:`speech_g2p` (also digit-only texts),
:func:`clean_text`, :func:`has_speech`, :func:`detect_language`, :func:`tts_phone_ids`, :func:`target_length`,
:func:`espeak_info`, :func:`fetch_zh_frontend`, :func:`fetch_ja_frontend`.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any

from metis_cli.errors import TextError

LANGUAGES = ("zh", "en", "ja", "fr", "ko", "de")
FRAMES_PER_SECOND = 50


# terminal control sequences: CSI (ESC [ ... final byte), OSC (ESC ] ... BEL or ESC \), other ESC X
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?")


def clean_text(text: str) -> str:
    """`text` without terminal control sequences (``\x1b[31m``) and control characters.

    Runs before any normalisation, so a colour code is not read out ("thirty-one m"). Line
    breaks and tabs stay (lines are phonemised one by one); other C0/C1 controls are removed.
    """
    text = _ESCAPES.sub("", text)
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")


def has_speech(text: str) -> bool:
    """True when `text` has something to pronounce once normalised: a letter or a digit
    ("2024", "$5" and "50%" are spelled out as words)."""
    return any(ch.isalpha() or ch.isdigit() for ch in text)


def check_utf8(text: str, what: str = "text") -> None:
    """TextError naming the first byte that was not UTF-8 (a lone surrogate from a command line
    or a stream decoded with ``surrogateescape``)."""
    for index, ch in enumerate(text):
        if "\udc80" <= ch <= "\udcff":
            line = text.count("\n", 0, index) + 1
            raise TextError(
                f"{what} is not valid UTF-8: byte 0x{ord(ch) - 0xDC00:02x} at character {index + 1}"
                + (f" (line {line})" if "\n" in text else "")
            )


def g2p(text: str, language: str) -> tuple[str, list[int]]:
    """Return ``(phones, ids)`` for ``text`` in ``language`` (the official ``g2p_``).

    ``zh`` and ``en`` both take the mixed Chinese/English path; text without letters or Chinese
    characters raises :class:`TextError` there (the official code raises too). ``fr``, ``de``
    and ``ko`` return an empty or punctuation-only result for such text, as the official code.
    Terminal control sequences are removed first (`clean_text`).
    """
    text = clean_text(text)
    if language in ("zh", "en"):
        from metis_cli.text.mixed import mixed_g2p

        return mixed_g2p(text)
    from metis_cli.text.vocab import phones_to_ids

    if language == "fr":
        from metis_cli.text.european import french_phones as convert
    elif language == "de":
        from metis_cli.text.european import german_phones as convert
    elif language == "ko":
        from metis_cli.text.korean import korean_phones as convert
    elif language == "ja":
        from metis_cli.text.japanese import japanese_phones as convert
    else:
        raise TextError(f"unsupported language {language!r}: expected one of {', '.join(LANGUAGES)}")
    phones = convert(text)
    return phones, phones_to_ids(phones)


def speech_g2p(text: str, language: str) -> tuple[str, list[int]]:
    """`g2p` for a text to speak (TTS jobs, `metis g2p`): also digit-only texts.

    The official front end refuses a zh/en text without a letter or Chinese character
    ("Unknown language: other"), so "2024", "$5" or "50%" alone could not be spoken although
    "Call 2024" is. Such a text is spelled out by the English number rules first ("twenty
    twenty-four"), exactly what the front end does to the same digits inside an English
    sentence; every other text gives `g2p`'s phones unchanged.
    """
    text = clean_text(text)
    if language in ("zh", "en") and text.strip() and not _has_zh_or_en(text) and has_speech(text):
        from metis_cli.text.english import normalise_numbers

        spelled = normalise_numbers(text)
        if _has_zh_or_en(spelled):
            text = spelled
    return g2p(text, language)


def _has_zh_or_en(text: str) -> bool:
    from metis_cli.text.mixed import char_class

    return any(char_class(ch) != "other" for ch in text)


@lru_cache(maxsize=1)
def _langid() -> Any:
    import langid

    return langid


def detect_language(text: str) -> str:
    """``langid`` label of ``text``; labels outside the six supported languages become ``en``."""
    label = _langid().classify(text)[0]
    return label if label in LANGUAGES else "en"


def tts_phone_ids(
    prompt_text: str,
    target_text: str,
    prompt_language: str | None = None,
    target_language: str | None = None,
) -> tuple[list[int], list[int]]:
    """Phone ids of the prompt and target texts (each language detected when not given).

    Stage 1 gets ``prompt_ids + target_ids`` (no separator, no BOS/EOS).
    """
    prompt_language = prompt_language or detect_language(prompt_text)
    target_language = target_language or detect_language(target_text)
    return speech_g2p(prompt_text, prompt_language)[1], speech_g2p(target_text, target_language)[1]


def target_length(prompt_frames: int, prompt_text: str, target_text: str, seconds: float | None) -> int:
    """Target semantic frames (spec §1.4): the UTF-8 byte ratio rule, or ``int(seconds * 50)``."""
    if seconds is not None:
        return int(seconds * FRAMES_PER_SECOND)
    prompt_bytes = len(prompt_text.encode("utf-8"))
    if prompt_bytes == 0:
        raise TextError("empty prompt text: cannot derive the target length from the byte ratio")
    return prompt_frames * len(target_text.encode("utf-8")) // prompt_bytes


def espeak_info() -> dict[str, str]:
    """The espeak-ng stack in use: ``backend`` (system/bundled), ``library``, versions."""
    from metis_cli.text.espeak import espeak_info as info

    return info()


def fetch_zh_frontend(dest: Path | None = None) -> Path:
    """Fetch (if needed) and verify the Chinese lexicon and polyphone model; return their folder."""
    from metis_cli.text.resources import fetch_zh_frontend as fetch

    return fetch(dest)


def fetch_ja_frontend(dest: Path | None = None) -> Path:
    """Fetch (if needed) the OpenJTalk 1.11 dictionary; return its folder."""
    from metis_cli.text.resources import fetch_ja_frontend as fetch

    return fetch(dest)

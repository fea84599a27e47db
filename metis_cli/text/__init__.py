"""TTS text front end: text → official phone string and phone ids (spec §9).

Languages load lazily: English never imports the Chinese or Japanese stacks.
"""

from __future__ import annotations

from metis_cli.errors import TextError

LANGUAGES = ("zh", "en", "ja", "fr", "ko", "de")


def g2p(text: str, language: str) -> tuple[str, list[int]]:
    """Return ``(phones, ids)`` for ``text`` in ``language`` (the official ``g2p_``)."""
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

"""The fixed phone vocabulary of the released MaskGCT / Metis models (spec §9.6)."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

#: The 8 punctuation marks that the front end keeps as phones.
MARKS = ",.?!;:'…"


@lru_cache(maxsize=1)
def vocabulary() -> dict[str, int]:
    """Return the phone → id table shipped in ``metis_cli/data/vocab.json``."""
    text = resources.files("metis_cli.data").joinpath("vocab.json").read_text(encoding="utf-8")
    return dict(json.loads(text)["vocab"])


def phones_to_ids(phones: str) -> list[int]:
    """Split a phone string on ``|`` and map each piece; unknown pieces are dropped (official)."""
    vocab = vocabulary()
    return [vocab[piece] for piece in phones.split("|") if piece in vocab]

"""The official polyphone BERT (ONNX, run with onnxruntime) for Chinese polyphonic characters."""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from importlib import resources
from typing import Any

from metis_cli.errors import TextError
from metis_cli.text.resources import zh_frontend_dir

log = logging.getLogger(__name__)


def _data(name: str) -> str:
    return resources.files("metis_cli.data").joinpath("zh").joinpath(name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def polyphonic_chars() -> frozenset[str]:
    """The 159 characters resolved by the BERT (``polychar.txt``)."""
    return frozenset(line.strip() for line in _data("polychar.txt").splitlines() if line.strip())


@lru_cache(maxsize=1)
def _classes() -> dict[int, str]:
    """Class index → numbered pinyin, e.g. ``10 → "le4"`` (``polydict.json`` is 1-based)."""
    table = json.loads(_data("polydict.json"))
    return {int(k) - 1: v[v.index("{") + 1 : v.index("}")] for k, v in table.items()}


@lru_cache(maxsize=1)
def _char_ids() -> tuple[dict[str, int], int, int]:
    tokens = _data("vocab.txt").split("\n")
    ids = {tok: i for i, tok in enumerate(tokens)}
    return ids, ids["[CLS]"], ids["[UNK]"]


@lru_cache(maxsize=1)
def _session() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise TextError("Chinese needs onnxruntime: pip install 'metis-cli[zh]'") from exc
    path = zh_frontend_dir() / "poly_bert_model.onnx"
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class PolyphoneModel:
    """Predicts the pinyin of polyphonic characters of one normalised Chinese run."""

    def __init__(self, run: str) -> None:
        self.run = run
        self._logits: Any = None

    def _forward(self) -> Any:
        import numpy as np

        if self._logits is None:
            ids, cls, unk = _char_ids()
            seq = [cls] + [ids.get(ch.lower(), unk) for ch in self.run]
            # one row per character of the run (position 0 is the first character)
            (out,) = _session().run(["outputs"], {"input_ids": np.asarray([seq], dtype=np.int32)})
            self._logits = out[0]
        return self._logits

    def predict(self, index: int) -> str:
        """Numbered pinyin of the character at ``index`` of the run (e.g. ``"zhang3"``)."""
        logits = self._forward()
        pinyin = _classes()[int(logits[index].argmax())]
        log.debug("polyphone %s@%d -> %s", self.run[index], index, pinyin)
        return pinyin

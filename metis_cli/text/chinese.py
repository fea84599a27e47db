"""Chinese runs: numerals, jieba, lexicon / polyphone BERT, tone sandhi, bopomofo → IPA (spec §9.5).

Needs the ``zh`` extra (jieba, cn2an, pypinyin, onnxruntime) and the cached resources
(``metis download zh-frontend``); imported only when a text contains Chinese.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from importlib import resources
from typing import Any

from metis_cli.errors import TextError
from metis_cli.text.polyphone import PolyphoneModel, polyphonic_chars
from metis_cli.text.resources import zh_frontend_dir
from metis_cli.text.vocab import MARKS

log = logging.getLogger(__name__)

_MARK_CLASS = "[" + re.escape(MARKS) + "]"
_FULLWIDTH = [
    ("，", ","), ("。", "."), ("！", "!"), ("？", "?"), ("；", ";"), ("：", ":"), ("、", ","),
    ("‘", "'"), ("’", "'"), ("⋯", "…"), ("···", "…"), ("・・・", "…"), ("...", "…"),
]  # fmt: skip
_NOT_KEPT = re.compile(r"[^\u4e00-\u9fff_" + re.escape(MARKS) + "]")
_CJK = re.compile(r"[\u4e00-\u9fff]")
_BARE_BOPOMOFO_END = re.compile(r"[\u3105-\u3129]$")
_TONE_MARKS = {"1": "", "2": "ˊ", "3": "ˇ", "4": "ˋ", "5": "˙", "0": "˙"}
_TONE_OF_MARK = {"ˊ": 2, "ˇ": 3, "ˋ": 4, "˙": 5}
_DIGITS = "零一二三四五六七八九十"  # what counts as "followed by a numeral" for a leading 一
_ER_EXCEPTIONS = {"女儿", "老儿", "男儿", "少儿", "小儿"}

# Appendix B.1, applied in this order as plain substring replacements.
_BOPOMOFO_IPA = [
    ("ㄅㄛ", "p⁼wo"), ("ㄆㄛ", "pʰwo"), ("ㄇㄛ", "mwo"), ("ㄈㄛ", "fwo"), ("ㄧㄢ", "|jɛn"), ("ㄩㄢ", "|ɥæn"),
    ("ㄧㄣ", "|in"), ("ㄩㄣ", "|ɥn"), ("ㄧㄥ", "|iŋ"), ("ㄨㄥ", "|ʊŋ"), ("ㄩㄥ", "|jʊŋ"), ("ㄧㄚ", "|ia"),
    ("ㄧㄝ", "|iɛ"), ("ㄧㄠ", "|iɑʊ"), ("ㄧㄡ", "|ioʊ"), ("ㄧㄤ", "|iɑŋ"), ("ㄨㄚ", "|ua"), ("ㄨㄛ", "|uo"),
    ("ㄨㄞ", "|uaɪ"), ("ㄨㄟ", "|ueɪ"), ("ㄨㄢ", "|uan"), ("ㄨㄣ", "|uən"), ("ㄨㄤ", "|uɑŋ"), ("ㄩㄝ", "|ɥɛ"),
    ("ㄅ", "p⁼"), ("ㄆ", "pʰ"), ("ㄇ", "m"), ("ㄈ", "f"), ("ㄉ", "t⁼"), ("ㄊ", "tʰ"),
    ("ㄋ", "n"), ("ㄌ", "l"), ("ㄍ", "k⁼"), ("ㄎ", "kʰ"), ("ㄏ", "x"), ("ㄐ", "tʃ⁼"),
    ("ㄑ", "tʃʰ"), ("ㄒ", "ʃ"), ("ㄓ", "ts`⁼"), ("ㄔ", "ts`ʰ"), ("ㄕ", "s`"), ("ㄖ", "ɹ`"),
    ("ㄗ", "ts⁼"), ("ㄘ", "tsʰ"), ("ㄙ", "|s"), ("ㄚ", "|a"), ("ㄛ", "|o"), ("ㄜ", "|ə"),
    ("ㄝ", "|ɛ"), ("ㄞ", "|aɪ"), ("ㄟ", "|eɪ"), ("ㄠ", "|ɑʊ"), ("ㄡ", "|oʊ"), ("ㄢ", "|an"),
    ("ㄣ", "|ən"), ("ㄤ", "|ɑŋ"), ("ㄥ", "|əŋ"), ("ㄦ", "əɹ"), ("ㄧ", "|i"), ("ㄨ", "|u"),
    ("ㄩ", "|ɥ"), ("ˉ", "→|"), ("ˊ", "↑|"), ("ˇ", "↓↑|"), ("ˋ", "↓|"), ("˙", "|"),
]  # fmt: skip
_RETROFLEX_ER = re.compile(r"([sɹ]`[⁼ʰ]?)([→↓↑ ]+|$)")
_S_ER = re.compile(r"([s][⁼ʰ]?)([→↓↑ ]+|$)")
_NOT_PHONE = re.compile(r"[^\w\s_" + re.escape(MARKS) + r"|→↓↑⁼ʰ`]")
_MARK = re.compile("(" + _MARK_CLASS + ")")
_BARS = re.compile(r"\|+")


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise TextError(f"Chinese needs {module}: pip install 'metis-cli[zh]'") from exc


@lru_cache(maxsize=1)
def _jieba() -> Any:
    jieba = _require("jieba")
    jieba.setLogLevel(logging.WARNING)
    return jieba


@lru_cache(maxsize=1)
def _pinyin_to_bopomofo() -> dict[str, str]:
    text = (
        resources.files("metis_cli.data")
        .joinpath("zh")
        .joinpath("pinyin_2_bpmf.txt")
        .read_text(encoding="utf-8")
    )
    pairs = (line.split("\t") for line in text.splitlines() if "\t" in line)
    return {p.strip(): b.strip() for p, b in pairs}


@lru_cache(maxsize=1)
def lexicon() -> dict[str, list[str]]:
    """``chinese_lexicon.txt``: word → numbered pinyin syllables."""
    path = zh_frontend_dir() / "chinese_lexicon.txt"
    table: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            word, _, pinyin = line.rstrip("\n").partition("\t")
            if pinyin:
                table[word] = pinyin.split()
    return table


def normalise(text: str) -> str:
    """Numerals → Chinese numerals, full-width marks, delete everything but Han, ``_`` and marks."""
    text = _require("cn2an").transform(text, "an2cn")
    for src, dst in _FULLWIDTH:
        text = text.replace(src, dst)
    text = re.sub(r"\s+", "", text)
    return _NOT_KEPT.sub("", text)


def segment(text: str) -> list[str]:
    """jieba segmentation followed by the official 一 / 不 / 儿 merges."""
    words = _jieba().lcut(text, cut_all=False)
    merged: list[str] = []
    i = 0
    while i < len(words):  # X 一 X → X一X
        if 0 < i < len(words) - 1 and words[i] == "一" and merged and merged[-1] == words[i + 1]:
            merged[-1] += "一" + words[i + 1]
            i += 2
            continue
        merged.append(words[i])
        i += 1
    glued: list[str] = []
    for word in merged:  # a word after a standalone 一 joins it
        if glued and glued[-1] == "一":
            glued[-1] += word
        else:
            glued.append(word)
    out: list[str] = []
    pending_bu = ""
    for word in glued:  # a standalone 不 joins the next word (a final one is dropped)
        if word == "不":
            pending_bu += word
            continue
        out.append(pending_bu + word)
        pending_bu = ""
    final: list[str] = []
    for word in out:  # a standalone 儿 (not first) joins the previous word
        if word == "儿" and final:
            final[-1] += word
        else:
            final.append(word)
    return final


def _bopomofo(pinyin: str) -> str | None:
    tone = pinyin[-1] if pinyin[-1:].isdigit() else "5"
    base = pinyin[:-1] if pinyin[-1:].isdigit() else pinyin
    letters = _pinyin_to_bopomofo().get(base)
    return None if letters is None else letters + _TONE_MARKS.get(tone, "˙")


def _tone(syllable: str) -> int:
    return _TONE_OF_MARK.get(syllable[-1:], 1)


def _base(syllable: str) -> str:
    return syllable.rstrip("ˊˇˋ˙")


def _word_syllables(word: str, start: int, model: PolyphoneModel) -> list[str]:
    """Bopomofo syllables of one word starting at ``start`` in the run."""
    lex = lexicon()
    poly = polyphonic_chars()
    if word in lex and word not in poly:
        syllables: list[str] = []
        for pinyin in lex[word]:
            bpmf = _bopomofo(pinyin)
            if bpmf is None:
                pypinyin = _require("pypinyin")
                syllables.extend(pypinyin.lazy_pinyin(word, style=pypinyin.Style.BOPOMOFO))
            else:
                syllables.append(bpmf)
        return syllables
    syllables = []
    for k, ch in enumerate(word):
        if ch in poly:
            bpmf = _bopomofo(model.predict(start + k))
        elif ch in lex:
            bpmf = _bopomofo(lex[ch][0])
        else:
            bpmf = None
        syllables.append(bpmf if bpmf is not None else ch)
    return syllables


def _sandhi(word: str, syl: list[str]) -> list[str]:
    """Official tone rules: 3-3 sandhi (with its 3-syllable quirk), 不, 一 and 儿."""
    syl = list(syl)
    n = len(syl)
    if len(word) == 3 and n >= 3 and _tone(syl[0]) == 3 and _tone(syl[1]) == 3 and _tone(syl[-1]) == 3:
        syl[0] += "ˊ"
        syl[1] += "ˊ"
    elif len(word) == 2 and n == 2 and _tone(syl[0]) == 3 and _tone(syl[1]) == 3:
        syl[0] = _base(syl[0]) + "ˊ"
    if "不" in word and set(word) != {"不"} and word != "不字" and n == len(word):
        if len(word) == 3 and word[1] == "不" and _base(syl[1]) == "ㄅㄨ":
            syl[1] = "ㄅㄨ˙"
        else:
            for i, ch in enumerate(word[:-1]):
                if ch == "不" and _tone(syl[i + 1]) == 4:
                    syl[i] = _base(syl[i]) + "ˊ"
    if "一" in word and n == len(word):
        syl = _yi_sandhi(word, syl)
    if len(word) > 1 and word.endswith("儿") and word not in _ER_EXCEPTIONS and n == len(word):
        syl[-1] = _base(syl[-1]) + "˙"
    return syl


def _yi_sandhi(word: str, syl: list[str]) -> list[str]:
    numerals = [i for i, ch in enumerate(word) if ch.isnumeric()]
    if len(numerals) > 1:
        for i, ch in enumerate(word):
            if ch != "一":
                continue
            if i == 0 and len(word) > 1 and word[1] not in _DIGITS:
                syl[0] = _base(syl[0]) + ("ˊ" if _tone(syl[1]) in (4, 5) else "ˋ")
            else:
                syl[i] = _base(syl[i])
        return syl
    if len(word) == 3 and word[1] == "一" and word[0] == word[2]:
        syl[1] = _base(syl[1]) + "˙"
    elif word.startswith("第一"):
        syl[1] = _base(syl[1])
    elif word[:2] in ("一月", "一日", "一号"):
        syl[0] = _base(syl[0])
    else:
        for i, ch in enumerate(word[:-1]):
            if ch != "一":
                continue
            if _tone(syl[i + 1]) == 4:
                syl[i] = _base(syl[i]) + "ˊ"
            elif word[i + 1] not in MARKS:
                syl[i] = _base(syl[i]) + "ˋ"
    return syl


def to_bopomofo(run: str) -> str:
    """Bopomofo string of a normalised run: ``|``-joined syllables with tone marks."""
    model = PolyphoneModel(run)
    out = ""
    start = 0
    for word in segment(run):
        pos = run.find(word, start)
        pos = start if pos < 0 else pos
        start = pos + len(word)
        if not _CJK.search(word):
            out += "|" + word
            continue
        syllables = _sandhi(word, _word_syllables(word, pos, model))
        syllables = [s + "ˉ" if _BARE_BOPOMOFO_END.search(s) else s for s in syllables]
        out += ("|" if out else "") + "|".join(syllables)
    return out


def bopomofo_to_ipa(text: str) -> str:
    """Appendix B.1 replacements and the clean-up regexes of spec §9.5 step 7."""
    for src, dst in _BOPOMOFO_IPA:
        text = text.replace(src, dst)
    text = _RETROFLEX_ER.sub(r"\1ɹ\2", text)
    text = _S_ER.sub(r"\1ɹ\2", text)
    text = _NOT_PHONE.sub("", text.removeprefix("|"))
    text = _MARK.sub(r"|\1|", text)
    return _BARS.sub("|", text).rstrip("|")


def chinese_phones(text: str) -> str:
    """Phone string of one Chinese run."""
    return bopomofo_to_ipa(to_bopomofo(normalise(text)))

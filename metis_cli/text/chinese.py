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
_DIGITS = "零一二三四五六七八九十"  # what counts as "followed by a numeral" for a leading 一
_ER_EXCEPTIONS = {"女儿", "老儿", "男儿", "少儿", "小儿"}
# After a non-final 一 these keep it in tone 1 (the official list; "…" and "_" are not in it).
_YI_PUNCTUATION = set("：，；。？！“”‘’':,;.?!()（）{}【】[]-~`、 ")

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
    text = _require("cn2an").transform(text.strip(), "an2cn")
    for src, dst in _FULLWIDTH:
        text = text.replace(src, dst)
    text = re.sub(r"\s+", "", text)
    return _NOT_KEPT.sub("", text)


def merge_yi(words: list[str]) -> list[str]:
    """The official 一 merges: ``X 一 X`` → ``X一X``, then a word after a standalone 一 joins it.

    Quirk kept from the official code: the merged word is written at index ``i - 1`` of the
    output, which is only possible while no earlier merge shortened it; a later ``X 一 X`` is
    therefore left as three words (and its 一 then takes the following X by the second rule).
    """
    out: list[str] = []
    for i, word in enumerate(words):
        if 0 < i < len(words) - 1 and word == "一" and words[i - 1] == words[i + 1]:
            if i - 1 < len(out):
                out[i - 1] = out[i - 1] + "一" + out[i - 1]
            else:
                out += [word, words[i + 1]]
        elif i >= 2 and words[i - 1] == "一" and words[i - 2] == word:
            continue  # the second X of an X 一 X, already written
        else:
            out.append(word)
    glued: list[str] = []
    for word in out:
        if glued and glued[-1] == "一":
            glued[-1] += word
        else:
            glued.append(word)
    return glued


def merge_bu(words: list[str]) -> list[str]:
    """A standalone 不 is glued onto the next word. Official quirks: of a run of standalone 不
    only one is kept (不 不 好 → 不好), and a final standalone 不 is dropped."""
    out: list[str] = []
    last = ""
    for word in words:
        if word != "不":
            if last == "不":
                word = last + word
            out.append(word)
        last = word
    return out


def merge_er(words: list[str]) -> list[str]:
    """A standalone 儿 (not the first word) is glued onto the previous word."""
    out: list[str] = []
    for i, word in enumerate(words):
        if i > 0 and word == "儿":
            out[-1] += word
        else:
            out.append(word)
    return out


def segment(text: str) -> list[str]:
    """jieba segmentation followed by the official 一 / 不 / 儿 merges (in that order)."""
    return merge_er(merge_bu(merge_yi(_jieba().lcut(text, cut_all=False))))


def _bopomofo(pinyin: str) -> str | None:
    """Numbered pinyin → bopomofo + tone mark; None unless the last character is a tone digit
    and the rest a known syllable (the official test ``py[:-1] in table and py[-1] in tones``)."""
    letters = _pinyin_to_bopomofo().get(pinyin[:-1])
    tone = _TONE_MARKS.get(pinyin[-1:])
    return None if letters is None or tone is None else letters + tone


def _word_syllables(word: str, start: int, model: PolyphoneModel) -> list[str]:
    """Bopomofo syllables of one word whose first character is at ``start`` in the run."""
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
            bpmf = ch
        if bpmf is None:
            raise TextError(f"Chinese: no bopomofo for the pinyin of {ch!r} in {word!r}")
        syllables.append(bpmf)
    return syllables


def change_tone(syllable: str, tone: str) -> str:
    """Replace the syllable's tone mark (one trailing ``˙ˊˇˋ``) by ``tone`` ('' = tone 1)."""
    if syllable[-1:] in ("˙", "ˊ", "ˇ", "ˋ"):
        return syllable[:-1] + tone
    return syllable + tone


def _sandhi(word: str, syl: list[str]) -> list[str]:
    """Official tone rules in order: 3-3 sandhi (with its 3-syllable quirk), 不, 一, 儿.

    Index errors of the official code (a word with fewer syllables than characters) become a
    one-line ``TextError``.
    """
    syl = list(syl)
    try:
        if len(word) == 3 and syl[0][-1:] == "ˇ" and syl[1][-1:] == "ˇ" and syl[-1][-1:] == "ˇ":
            syl[0] += "ˊ"  # appended, not replaced (official quirk)
            syl[1] += "ˊ"
        if len(word) == 2 and syl[0][-1:] == "ˇ" and syl[-1][-1:] == "ˇ":
            syl[0] = syl[0][:-1] + "ˊ"
        syl = _bu_sandhi(word, syl)
        syl = _yi_sandhi(word, syl)
        if len(word) > 1 and word[-1] == "儿" and word not in _ER_EXCEPTIONS:
            syl[-1] = change_tone(syl[-1], "˙")
    except IndexError:
        raise TextError(f"Chinese: the syllables of {word!r} do not match its characters") from None
    return syl


def _bu_sandhi(word: str, syl: list[str]) -> list[str]:
    if set(word) == {"不"} or word == "不字":
        return syl
    if len(word) == 3 and word[1] == "不" and syl[1][:-1] == "ㄅㄨ":
        syl[1] = syl[1][:-1] + "˙"
        return syl
    for i, ch in enumerate(word):
        if ch == "不" and i + 1 < len(syl) and i + 1 < len(word) and syl[i + 1][-1:] == "ˋ":
            syl[i] = syl[i][:-1] + "ˊ"  # drops the last character whatever it is (official)
    return syl


def _yi_sandhi(word: str, syl: list[str]) -> list[str]:
    if "一" in word and any(ch.isnumeric() for ch in word if ch != "一"):
        for i, ch in enumerate(word):
            if i == 0 and ch == "一" and len(word) > 1 and word[1] not in _DIGITS:
                syl[0] = change_tone(syl[0], "ˊ" if syl[0] and syl[1][-1:] in ("ˋ", "˙") else "ˋ")
            elif ch == "一":
                syl[i] = change_tone(syl[i], "")
        return syl
    if len(word) == 3 and word[1] == "一" and word[0] == word[-1]:
        syl[1] = change_tone(syl[1], "˙")
    elif word.startswith("第一"):
        syl[1] = change_tone(syl[1], "")
    elif word.startswith(("一月", "一日", "一号")):
        syl[0] = change_tone(syl[0], "")
    else:
        for i, ch in enumerate(word):
            if ch != "一" or i + 1 >= len(word):
                continue
            if len(syl) > i + 1 and syl[i + 1][-1:] == "ˋ":
                syl[i] = change_tone(syl[i], "ˊ")
            elif word[i + 1] not in _YI_PUNCTUATION:
                syl[i] = change_tone(syl[i], "ˋ")
    return syl


def to_bopomofo(run: str) -> str:
    """Bopomofo string of a normalised run: ``|``-joined syllables with tone marks.

    A word's position for the polyphone model is the summed length of the words before it (as
    the official code counts), which differs from its place in the run once a merge dropped a 不.
    """
    model = PolyphoneModel(run)
    out = ""
    start = 0
    for word in segment(run):
        pos = start
        start += len(word)
        syllables = _sandhi(word, _word_syllables(word, pos, model))
        if not _CJK.search(word):
            out += "|" + word
            continue
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

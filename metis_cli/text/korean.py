"""Korean: hanja removal, the upper-case Latin table, espeak ``ko`` (spec §9.4)."""

from __future__ import annotations

import re

from metis_cli.text.espeak import phonemise

# The official character class ends with three more ranges written with the characters 豈-鶴 侮-頻
# 並-龎; in the official file (checked in the maskgct==0.0.19 sdist) these are the unified
# ideographs U+8C48-9DB4, U+4FAE-983B, U+4E26-9F8E, inside U+4E00-9FC3 already, not the CJK
# compatibility ideographs U+F900-FAD9 that the classic form of this class means. So the
# compatibility ideographs are kept, as the official code keeps them.
_HANJA = re.compile(
    "[\u2e80-\u2e99\u2e9b-\u2ef3\u2f00-\u2fd5\u3005\u3007\u3021-\u3029\u3038-\u303b\u3400-\u4db5"
    "\u4e00-\u9fc3]"
)
_LATIN_TABLE = {
    "KOREA": "코리아", "IDOL": "아이돌", "IT": "아이티", "IQ": "아이큐", "UP": "업", "DOWN": "다운",
    "PC": "피씨", "CCTV": "씨씨티비", "SNS": "에스엔에스", "AI": "에이아이", "CEO": "씨이오",
    "A": "에이", "B": "비", "C": "씨", "D": "디", "E": "이", "F": "에프", "G": "지", "H": "에이치",
    "I": "아이", "J": "제이", "K": "케이", "L": "엘", "M": "엠", "N": "엔", "O": "오", "P": "피",
    "Q": "큐", "R": "알", "S": "에스", "T": "티", "U": "유", "V": "브이", "W": "더블유", "X": "엑스",
    "Y": "와이", "Z": "제트",
}  # fmt: skip
_LATIN_RUN = re.compile(r"[A-Za-z]+")


def korean_normalise(text: str) -> str:
    """Delete hanja, read listed upper-case Latin words in Hangul, lower-case the rest."""
    text = _HANJA.sub("", text.strip())
    text = _LATIN_RUN.sub(lambda m: _LATIN_TABLE.get(m.group(0), m.group(0)), text)
    return text.lower()


def korean_phones(text: str) -> str:
    """Phone string of a Korean text."""
    return phonemise(korean_normalise(text), "ko")

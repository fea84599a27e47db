"""The text normalisation rules of spec §9, one by one and next to their neighbours.

How the expected values are worked out: each English case states the text the rules of §9.4
must produce (the spelled-out string, derived by hand in the docstring or the case's reason)
and the test checks both that string and that the phone ids equal those of the spelled-out
text, so a rule that fires wrongly changes the ids. Where a case is a known regression the
phones are also written out, built from words whose phones the shared goldens pin
(``tests/fixtures/g2p/cases.jsonl``): "percent" = ``p|ɚ|s|ɛ|n|t`` (shared-en-03), "point" =
``p|ɔɪ|n|t`` (shared-en-05), "five" = ``f|aɪ|v`` (shared-en-04), "three" = ``θ|ɹ|iː``
(shared-en-03).

Words with the ``oːɹ`` sound (four, more, for) are avoided: espeak-ng 1.51 and 1.52 differ there
(golden README), and these tests must hold on both stacks.
"""

from __future__ import annotations

import re

import pytest

from metis_cli.text import g2p
from metis_cli.text.english import english_phones, normalise, post_map
from metis_cli.text.espeak import normalise as phonemiser_normalise
from metis_cli.text.espeak import phonemise, split_lines
from metis_cli.text.vocab import phones_to_ids, vocabulary


def _spaces(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _ids(phones: str) -> list[int]:
    vocab = vocabulary()
    return [vocab[p] for p in phones.split("|") if p]


# (text, the spelled-out text §9.4 produces, the rule(s) and the reasoning)
ENGLISH_CASES = [
    # --- abbreviations (whole word, case-insensitive, no period needed, listed order) ---
    ("Mr Brown", "mister Brown", "mr→mister without a period"),
    ("MRS Jones", "misess Jones", "case-insensitive; mrs is tried before mr so it is not 'mister s'"),
    ("Drs Who", "doctors Who", r"\bdr\b does not match inside 'Drs' (no boundary between r and s)"),
    ("Gen. Lee, Maj. Tom", "general. Lee, major. Tom", "the period stays and is read as a mark"),
    ("stop", "stop", r"'st' inside a word is not expanded (\b on both sides)"),
    ("btw etc", "by the way et cetera", "multi-word expansions"),
    # --- numbers inside abbreviations ---
    ("CO2", "CO two", r"\bco\b needs a boundary after 'co'; '2' is a word character, so no 'company'"),
    ("Lt. 1st", "lieutenant. first", "abbreviation first, then the ordinal rule on '1st'"),
    ("St 5", "saint five", "the abbreviation and then the integer rule"),
    # --- pounds (not padded) ---
    ("a£5b", "a five poundsb", r"£N → 'N pounds' with no padding, so 'pounds' joins the next letter"),
    ("£1,000", "one thousand pounds", "commas go first; 1000 is not > 1000, so no year rule"),
    # --- dollars ---
    ("$3.50", "three dollars, fifty cents", "dollars and cents (plural units)"),
    ("$1.01", "one dollar, one cent", "singular units"),
    ("$1", "one dollar", "dollars only"),
    ("$0.05", "five cents", "cents only"),
    ("$0", "zero dollars", "neither"),
    (
        "$1.2.3",
        "one point two . three dollars",
        "malformed: ' 1.2.3 dollars ', then the decimal rule takes '1.2' and leaves '.3'",
    ),  # fmt: skip
    # --- money with cents and a percent ---
    ("$2.50 is 10%", "two dollars, fifty cents is ten percent", "money, then percent"),
    (
        "$5%",
        "five dollars %",
        "the dollar rule runs first and puts ' dollars ' between 5 and %, so "
        "the percent rule no longer sees a number (the % is deleted by the phonemiser)",
    ),  # fmt: skip
    # --- fractions ---
    ("1/2 1/4", "one half one quarter", "the two fixed fractions"),
    ("3/2 3/4", "three halves three quarters", "x/2, x/4"),
    ("5/8", "five eighth", "a + ordinal(b): 'eighth' (singular: official)"),
    (
        "1999/3",
        "one thousand, nine hundred and ninety-nine third",
        "the numerator is spelled by number_to_words with its defaults ('and', commas), not by the year rule",
    ),  # fmt: skip
    # --- a fraction next to a decimal ---
    ("1/2.5", "one half . five", "fractions run before decimals: '1/2' is taken, '.5' is left"),
    ("2.5/3", "two . five third", "'5/3' is a fraction first, so '2.' is no decimal any more"),
    # --- decimals ---
    ("3.15", "three point fifteen", "x.y → x point y (the digits after the point as one number)"),
    ("0.5", "zero point five", "zero"),
    # --- percent, alone and after a decimal ---
    ("15%", "fifteen percent", "N% → N percent"),
    (
        "12.5%",
        "twelve point five percent",
        "decimal first: '12 point 5%'; the % still follows a digit, so the percent rule reads it",
    ),  # fmt: skip
    ("1,000,000.5%", "one million point five percent", "commas, decimal and percent in a row"),
    # --- ordinals ---
    ("3rd 21st", "third twenty-first", "ordinal words"),
    (
        "1999th",
        "one thousand, nine hundred and ninety-ninth",
        "the ordinal rule runs before the integer rule, so no year reading",
    ),  # fmt: skip
    # --- a year next to an ordinal ---
    ("the 2nd of 1999", "the second of nineteen ninety-nine", "ordinal, then the year rule"),
    ("1999 2nd", "nineteen ninety-nine second", "both orders"),
    # --- integers and years ---
    ("101", "one hundred one", "andword='' (no 'and')"),
    ("1,234", "twelve thirty-four", "commas removed, then 1234 is read as a year (pairs)"),
    ("1000 1001", "one thousand ten oh one", "1000 is not a year; 1001 is: pairs with zero = 'oh'"),
    ("2000 2005 2010", "two thousand two thousand five twenty ten", "the three 2xxx special cases"),
    (
        "1900 2999 3000",
        "nineteen hundred twenty-nine ninety-nine three thousand",
        "multiples of 100, the last year, and 3000 (not a year)",
    ),  # fmt: skip
]


@pytest.mark.parametrize(("text", "spelled", "reason"), ENGLISH_CASES, ids=[c[0] for c in ENGLISH_CASES])
def test_english_rule(text: str, spelled: str, reason: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rule of §9.4 (English) alone and next to its neighbours; see the case's reason.

    The expected ids are those of the spelled-out text sent through the rest of the pipeline
    unchanged (normalisation switched off, so 'CO two' is not expanded a second time). Both get a
    leading 'Say ' because a text of digits and symbols only has no English run (it raises, as
    the official code does)."""
    from metis_cli.text import english

    assert _spaces(normalise(text)) == spelled, reason
    actual = g2p("Say " + text, "en")
    monkeypatch.setattr(english, "normalise", lambda t: t)
    assert actual == g2p("Say " + spelled, "en"), reason


def test_percent_after_a_decimal_is_read() -> None:
    """Regression (held-out official case): '12.5%' must read 'twelve point five percent'.

    Spelled out: "It rose twelve point five percent" → ``ɪ|t`` ``ɹ|oʊ|z`` then ``t|w|ɛ|l|v``
    ``p|ɔɪ|n|t`` ``f|aɪ|v`` ``p|ɚ|s|ɛ|n|t`` joined by the word boundary ``_``; the last word
    ends in ``t`` (in the final-character list), so ``|_`` is appended and, the run being the
    last English one, removed again with its id: the string ends in ``t|``.
    """
    phones = "ɪ|t|_|ɹ|oʊ|z|_|t|w|ɛ|l|v|_|p|ɔɪ|n|t|_|f|aɪ|v|_|p|ɚ|s|ɛ|n|t|"
    assert g2p("It rose 12.5%", "en") == (phones, _ids(phones))


def test_short_interjection_has_a_single_trailing_separator() -> None:
    """Regression (held-out official case): 'Hi' ends in ``aɪ``, whose last character ``ɪ`` is in
    the final-character list, so the English converter returns ``h|aɪ|_``; the mixed path adds
    ``|`` (``h|aɪ|_|``) and, the run being the last and English, cuts the final two characters
    ``_|`` and drops the last id: ``h|aɪ|`` with ids [h, aɪ] (never ``h|aɪ||``)."""
    assert english_phones("Hi") == "h|aɪ|_"
    phones, ids = g2p("Hi", "en")
    assert phones == "h|aɪ|"
    assert ids == _ids("h|aɪ")
    assert g2p("Oh!", "en")[0].endswith("!|")  # ends in a mark: no boundary appended at all


def test_trailing_boundary_rule() -> None:
    """``|_`` is appended only after a final character in the spec's list: 'world' ends in ``d``
    (not in the list) → no ``_``; 'Hi' → ``_``. In a non-final English run the ``_`` is kept:
    'Hi你好' = ``h|aɪ|_|`` + Chinese, so id 4 (``_``) is the third id."""
    assert english_phones("world") == "w|ɜː|l|d"
    assert english_phones("Hi").endswith("|_")
    phones, ids = g2p("Hi你好", "en")
    assert phones.startswith("h|aɪ|_|")
    assert ids[:3] == _ids("h|aɪ|_")


def test_post_mapping_whole_tokens_in_order() -> None:
    """Post-mapping rewrites only whole ``|``/``_``-bounded tokens, each rule until it no longer
    matches, in the listed order: ``t|ɹ``→``tɹ``, ``t|s``→``ts`` (twice in a row), ``ɐ``→``ɚ``,
    ``ᵻ``→``ɪ``, ``əl``→``l``, ``x``→``k``, ``ɬ``→``l``, ``ʔ``→``t``, ``n̩``→``n``, ``oː|ɹ``→``oːɹ``."""
    assert post_map("t|ɹ|ɐ|t|s|t|s") == "tɹ|ɚ|ts|ts"
    assert post_map("d|ɹ|_|d|z|_|ɪ|ɹ") == "dɹ|_|dz|_|ɪɹ"
    assert post_map("ᵻ|əl|x|ɬ|ʔ|n̩|oː|ɹ") == "ɪ|l|k|l|t|n|oːɹ"
    assert post_map("at|ɹ|xa|ɐb") == "at|ɹ|xa|ɐb"  # not whole tokens
    assert phones_to_ids(post_map("oː|ɹ")) == [vocabulary()["oːɹ"]]


# ------------------------------------------------------------------------------------------
# step 5 separators, for every language
# ------------------------------------------------------------------------------------------

SEPARATOR_TEXTS = {
    "en": "Wait... what?! Yes; no: maybe, 'ok'.",
    "fr": "Attends... quoi ?! Oui ; non : peut-être, bon.",
    "de": "Warte... was?! Ja; nein: vielleicht, gut.",
    "ko": "잠깐... 뭐?! 네; 아니: 아마, 좋아.",
}


@pytest.mark.parametrize("language", sorted(SEPARATOR_TEXTS))
def test_separator_rules_espeak_languages(language: str) -> None:
    """§9.4 step 5: every mark becomes its own token (``|m|``), runs of ``|`` collapse to one and
    the trailing ``|`` is stripped. With marks back to back ('?!') the result is ``?|!``."""
    phones = phonemise(SEPARATOR_TEXTS[language], language)
    assert "||" not in phones
    assert not phones.endswith("|") and not phones.startswith("|")
    tokens = phones.split("|")
    assert "?" in tokens and "!" in tokens and "?|!" in phones
    for mark in ".,":
        assert mark in tokens  # kept as standalone phones (ids 1 and 0)


def test_separator_rules_english_string_end() -> None:
    """The English run keeps step 5's result; the mixed path then adds one ``|`` per run: a text
    ending in a mark ends ``.|`` (shared-en-00), never ``.||``."""
    phones, _ = g2p("Yes... no?!", "en")
    assert phones.endswith("?|!|") and "||" not in phones


def test_separator_rules_chinese(zh_resources) -> None:
    """§9.5 step 7(d) for Chinese: marks surrounded by ``|``, ``|`` runs collapsed, trailing ``|``
    stripped (the mixed path then adds one)."""
    from metis_cli.text.chinese import chinese_phones

    phones = chinese_phones("你好……真的吗？！好。")
    assert "||" not in phones and not phones.endswith("|") and not phones.startswith("|")
    assert "?|!" in phones and phones.endswith(".")


def test_phonemiser_lines_are_normalised_separately() -> None:
    """phonemizer splits the text into lines (newlines stripped at both ends first) and the
    official tokenizer normalises each line on its own: a mark before a line break does not
    swallow it, so 'Hello.\\nWorld' keeps two lines and the piece ``\\nw`` (not in the
    vocabulary) is dropped, as in shared-en-18."""
    assert split_lines("\nHello.\nWorld\n") == ["Hello.", "World"]
    assert phonemiser_normalise("  a\t b , c  ") == "a b,c"
    phones, ids = g2p("Hello.\nWorld", "en")
    assert ".|\nw|" in phones
    assert ids == _ids("h|ə|l|oʊ|.") + _ids("ɜː|l|d")


# ------------------------------------------------------------------------------------------
# French, German, Korean cleaners
# ------------------------------------------------------------------------------------------


def test_french_rules() -> None:
    """French §9.4 steps 1-4 in order (worked out by hand):

    * 'M. Dupont' → 'monsieur Dupont' (abbreviation + literal period, case-insensitive);
    * 'Mlles' without a period → 'mademoiselles' (Mlle is tried first and matches its prefix);
    * 'XMlle' is left alone: the bare rules still need a word boundary before the abbreviation;
    * '&' → ' et ', ';' → ',', ':' → ',', '-' → ' ';
    * '…Bonjour' → '.Bonjour' (map) → 'Bonjour' (leading marks deleted).
    """
    from metis_cli.text.european import french_normalise

    assert french_normalise("M. Dupont") == "monsieur Dupont"
    assert french_normalise("Mlles Roux") == "mademoiselles Roux"
    assert french_normalise("XMlle") == "XMlle"
    assert french_normalise("toi & moi; lui: peut-être") == "toi et moi, lui, peut être"
    assert french_normalise("…Bonjour (ici) « là »") == "Bonjour ici là"
    assert french_normalise("av. J.-C") == "avenue J. C"  # 'av' is listed before 'av. J.-C'


def test_german_rules() -> None:
    """German = French steps 2-4 without abbreviations and without the '&' rule: 'Dr.' stays,
    '&' is kept by the cleaner (the phonemiser then deletes it), 'z.B.-Test' → 'z.B. Test'."""
    from metis_cli.text.european import german_normalise

    assert german_normalise("Dr. Müller & Co; z.B.-Test: ja") == "Dr. Müller & Co, z.B. Test, ja"
    assert german_normalise("...„Hallo“ [x]") == "„Hallo x"


def test_korean_rules() -> None:
    """Korean: hanja deleted (the official class; the CJK compatibility ideographs U+F900-FAD9
    are *not* in it, see korean.py), upper-case table words read in Hangul (case-sensitive: 'Ai' is not 'AI'),
    unlisted runs lower-cased. The text is stripped before the hanja go, so the space after them
    stays (official order)."""
    from metis_cli.text.korean import korean_normalise

    assert korean_normalise(" 韓國 AI와 Ai, BTS ") == " 에이아이와 ai, bts"
    assert korean_normalise("\u4e00\u9fc3\u3400한국") == "한국"
    assert korean_normalise("\uf900한국") == "\uf900한국"


# ------------------------------------------------------------------------------------------
# Chinese merges and tone rules (pure functions: no jieba, lexicon or BERT needed)
# ------------------------------------------------------------------------------------------


def test_chinese_merge_yi_official_quirk() -> None:
    """X 一 X merges only while nothing was merged before (the official code writes the merged
    word at index i-1): the second 说 一 说 stays three words, then the second rule glues the
    word after a standalone 一 onto it: [看一看, 说, 一说]."""
    from metis_cli.text.chinese import merge_yi

    assert merge_yi(["看", "一", "看", "说", "一", "说"]) == ["看一看", "说", "一说"]
    assert merge_yi(["一", "天", "好"]) == ["一天", "好"]


def test_chinese_merge_bu_and_er() -> None:
    """不 不 好 → [不好] (only one standalone 不 survives), a final 不 is dropped; 儿 joins the
    previous word unless it is the first word."""
    from metis_cli.text.chinese import merge_bu, merge_er

    assert merge_bu(["不", "不", "好"]) == ["不好"]
    assert merge_bu(["好", "不"]) == ["好"]
    assert merge_er(["儿", "玩", "儿"]) == ["儿", "玩儿"]


def test_chinese_tone_rules() -> None:
    """change_tone replaces one trailing tone mark; 一 in a word with another numeral (not 一)
    loses its tone; 一一 has no other numeral, so the ordinary rule applies (tone 4 before a
    non-tone-4 syllable); a 一 before '…' gets tone 4 ('…' is not in the official list)."""
    from metis_cli.text.chinese import _sandhi, change_tone

    assert change_tone("ㄧˇˊ", "ˋ") == "ㄧˇˋ" and change_tone("ㄧ", "ˊ") == "ㄧˊ"
    assert _sandhi("十一", ["ㄕˊ", "ㄧ"]) == ["ㄕˊ", "ㄧ"]
    assert _sandhi("一一", ["ㄧ", "ㄧ"]) == ["ㄧˋ", "ㄧ"]
    assert _sandhi("一…", ["ㄧ", "…"]) == ["ㄧˋ", "…"]
    assert _sandhi("一,", ["ㄧ", ","]) == ["ㄧ", ","]
    assert _sandhi("不怕", ["ㄅㄨˋ", "ㄆㄚˋ"]) == ["ㄅㄨˊ", "ㄆㄚˋ"]
    assert _sandhi("好好", ["ㄏㄠˇ", "ㄏㄠˇ"]) == ["ㄏㄠˊ", "ㄏㄠˇ"]
    assert _sandhi("展览馆", ["ㄓㄢˇ", "ㄌㄢˇ", "ㄍㄨㄢˇ"]) == ["ㄓㄢˇˊ", "ㄌㄢˇˊ", "ㄍㄨㄢˇ"]

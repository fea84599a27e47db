"""Text rules before the front end (docs/TEXT.md): digits are speech, control sequences are
removed, whitespace is empty, bytes that are not UTF-8 are named (job layer, g2p, tts stdin)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from metis_cli import jobs
from metis_cli.errors import TextError
from metis_cli.text import clean_text, g2p, speech_g2p

METIS = [sys.executable, "-m", "metis_cli"]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


@pytest.mark.parametrize(
    ("text", "spoken"), [("2024", "twenty"), ("911", "nine"), ("$5", "five"), ("50%", "fifty")]
)
def test_digit_only_texts_are_spelled_out_like_in_a_sentence(text, spoken):
    assert jobs.check_text(text) == text
    with pytest.raises(TextError, match="no letters"):
        g2p(text, "en")  # the official front end refuses it ("Unknown language: other")
    _, ids = speech_g2p(text, "en")
    _, words = g2p(spoken, "en")
    assert ids[: len(words) - 1] == words[:-1]  # the spelled-out number starts the same way
    # the same digits inside a sentence give the same phones
    _, sentence = g2p(f"Call {text}", "en")
    assert ", ".join(map(str, ids[:-1])) in ", ".join(map(str, sentence))


def test_control_sequences_are_removed_before_normalisation():
    assert clean_text("\x1b[31mHello\x1b[0m there\x07") == "Hello there"
    assert jobs.check_text("\x1b[1;31mHi\x1b[0m") == "Hi"
    assert g2p("\x1b[31mHello\x1b[0m", "en") == g2p("Hello", "en")


@pytest.mark.parametrize("text", ["   ", "\t\n ", "\x1b[31m \x1b[0m"])
def test_whitespace_only_text_is_empty(text):
    with pytest.raises(TextError, match="empty text"):
        g2p(text, "en")
    with pytest.raises(TextError, match="is empty"):
        jobs.check_text(text)


def test_text_without_letters_or_digits_is_refused():
    with pytest.raises(TextError, match="has no letters or digits"):
        jobs.check_text("!!! ???")


def test_lone_surrogates_name_the_byte():
    with pytest.raises(TextError, match="not valid UTF-8: byte 0xff at character 4"):
        jobs.check_text("abc\udcffdef")


def test_g2p_accepts_digits_and_names_the_bad_line_and_byte():
    res = subprocess.run(
        [*METIS, "g2p", "-l", "en"],
        input=b"2024\n\xff\xfeoops\n   \nHello\n",
        capture_output=True,
        env=ENV,
        timeout=120,
    )
    out = res.stdout.decode().splitlines()
    err = res.stderr.decode()
    assert res.returncode == 1  # two bad lines; the others were converted
    assert len(out) == 2 and out[0].startswith("en\t") and out[1].startswith("en\t")
    assert "line 2: text is not valid UTF-8: byte 0xff at character 1" in err
    assert "line 3: empty text" in err
    assert "Traceback" not in err and "surrogates" not in err


@pytest.mark.parametrize("flag", [["-t", "-"], ["--text-file", "-"]])
def test_tts_text_from_stdin_that_is_not_utf8_is_a_usage_error_naming_line_and_byte(tmp_path, flag):
    prompt = tmp_path / "p.wav"
    prompt.write_bytes(b"")
    res = subprocess.run(
        [*METIS, "tts", *flag, "-p", str(prompt), "--prompt-text", "A b.", "-o", str(tmp_path / "o.wav")],
        input=b"Hello\nthere \xe9t\xe9\n",
        capture_output=True,
        env=ENV,
        timeout=120,
    )
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert err.strip() == "metis: error: stdin: line 2: not UTF-8 (byte 0xe9 at byte 7 of the line)"


def test_phonemizer_word_count_false_alarm_is_not_logged_and_other_messages_are(caplog):
    from phonemizer.separator import Separator

    from metis_cli.text import espeak

    backend = espeak._backend("en")
    sep = Separator(phone="|", syllable="-", word="|_|")
    with caplog.at_level("WARNING"):
        backend.phonemize(
            ["Call 2024"], separator=sep, strip=True, njobs=1
        )  # espeak reads 2024: 2 -> 5 words
        espeak.phonemizer_log.warning("another phonemizer message")
    counts = backend._words_mismatch._count_txt, backend._words_mismatch._count_phn
    assert counts == ([2], [5])  # the mismatch happened
    assert not [r for r in caplog.records if "words count mismatch" in r.getMessage()]
    assert [r.getMessage() for r in caplog.records] == ["another phonemizer message"]

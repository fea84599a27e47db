"""Unit tests of the text front end pieces (no espeak needed unless stated)."""

from __future__ import annotations

import hashlib
import subprocess
import urllib.request
from pathlib import Path

import pytest

from metis_cli.errors import TextError
from metis_cli.text import detect_language, target_length
from metis_cli.text import resources as res
from metis_cli.text.english import normalise, post_map
from metis_cli.text.mixed import split_runs
from metis_cli.text.vocab import phones_to_ids, vocabulary


def test_vocabulary_shape_and_punctuation_ids() -> None:
    vocab = vocabulary()
    assert len(vocab) == 363
    assert sorted(vocab.values()) == list(range(363))
    assert [vocab[m] for m in ",.?!_"] == [0, 1, 2, 3, 4]
    assert phones_to_ids("|h|ə|not-a-phone||.|") == [vocab["h"], vocab["ə"], 1]


def test_split_runs_attaches_other_characters() -> None:
    assert split_runs("12 Hello大家好，ok!") == [("en", "12 Hello"), ("zh", "大家好，"), ("en", "ok!")]
    assert split_runs("?!") == [("other", "?!")]


def test_english_numbers_and_abbreviations() -> None:
    text = normalise("Dr. Smith paid $1,250.75 in 1999 and 2005")
    words = text.split()
    assert words[:2] == ["doctor.", "Smith"]
    assert "twelve fifty dollars," in " ".join(words)
    assert "nineteen ninety-nine" in text and "two thousand five" in text


def test_post_map_only_whole_tokens_and_repeated() -> None:
    assert post_map("t|ɹ|ɐ|t|s") == "tɹ|ɚ|ts"
    assert post_map("at|ɹ") == "at|ɹ"  # "t" is not a whole token here


def test_target_length_rules() -> None:
    assert target_length(629, "a" * 223, "b" * 224, None) == 631
    assert target_length(100, "ab", "你", None) == 150  # UTF-8 bytes, not characters
    assert target_length(1, "x", "y", 0.29) == 14  # float product truncated
    with pytest.raises(TextError):
        target_length(10, "", "y", None)


def test_detect_language_maps_unknown_labels_to_english() -> None:
    assert detect_language("Ciao, come stai oggi? Tutto bene, grazie.") == "en"
    assert detect_language("今天天气真不错，我们去公园散步吧。") == "zh"


def test_git_blob_id_matches_git(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello\n" * 1000)
    expected = hashlib.sha1(b"blob 6000\0" + b"hello\n" * 1000).hexdigest()
    assert res.git_blob_id(path) == expected
    try:
        git = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return
    assert git.stdout.strip() == expected


def test_missing_zh_resources_name_the_download_command(tmp_path: Path) -> None:
    with pytest.raises(TextError, match="metis download zh-frontend"):
        res.zh_frontend_dir(tmp_path)


def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI runs with HF_HUB_OFFLINE=1; these tests fake the network, so downloads must be on."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


def test_fetch_zh_offline_is_a_one_line_text_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    _online(monkeypatch)
    with pytest.raises(TextError) as info:
        res.fetch_zh_frontend(tmp_path / "zh")
    assert "\n" not in str(info.value)


def test_fetch_zh_rejects_wrong_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sdist whose files differ from the official blobs is refused."""
    import io
    import tarfile

    archive = tmp_path / "fake.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for r in res.ZH_RESOURCES:
            data = b"not the official file"
            info = tarfile.TarInfo(f"maskgct-0.0.19/{res._ZH_PREFIX}{r.member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setattr(res, "pypi_file_url", lambda name, version, filename: "unused")
    _online(monkeypatch)
    monkeypatch.setattr(res, "download", lambda url, target: target.write_bytes(archive.read_bytes()))
    with pytest.raises(TextError, match="blob id"):
        res.fetch_zh_frontend(tmp_path / "zh")
    assert not (tmp_path / "zh" / "chinese_lexicon.txt").exists()


def test_espeak_languages_accept_letterless_text() -> None:
    from metis_cli.text import g2p

    assert g2p("", "de") == ("", [])
    with pytest.raises(TextError):
        g2p("2024", "en")
    with pytest.raises(TextError, match="unsupported language"):
        g2p("hello", "it")

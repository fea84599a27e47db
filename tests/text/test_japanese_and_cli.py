"""Japanese text handling with a stand-in analyser, its clear errors, and the ``metis g2p`` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from metis_cli.errors import TextError
from metis_cli.text import japanese as ja
from metis_cli.text import resources as res


class StandIn:
    """Returns fixed OpenJTalk-like words; records the text it was given."""

    def __init__(self, words: list[tuple[str, str]], accent_fails: bool = False) -> None:
        self.words = words
        self.accent_fails = accent_fails
        self.seen = ""

    def run_frontend(self, text: str) -> list[dict[str, Any]]:
        self.seen = text
        return [{"string": s, "pron": p} for s, p in self.words]

    def estimate_accent(self, words: list[dict[str, Any]]) -> Any:
        if self.accent_fails:
            raise RuntimeError("accent failure is swallowed")
        return words


def test_japanese_morae_long_vowels_and_punctuation() -> None:
    analyser = StandIn(
        [("コーヒー", "コーヒー"), ("を", "ヲ"), ("飲む", "ノム"), ("。", "、")], accent_fails=True
    )
    phones = ja.japanese_phones(" コーヒー を 飲む。 ", analyser)
    assert analyser.seen == "コーヒーを飲む。"
    # ç is "c" + U+0327 COMBINING CEDILLA, as in the official table (vocabulary id 323)
    assert phones.split("|") == ["k", "o", "o", "c\u0327", "i", "i", "o", "n", "o", "m", "ɯ", "."]


def test_japanese_iteration_mark_and_unknown_reading_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ja, "_kana_of", lambda surface: "エー")
    analyser = StandIn([("時", "トキ"), ("々", "、"), ("A", "、"), ("？", "？")])
    phones = ja.japanese_phones("時々A？", analyser)
    # 々 is glued to 時 (reading stays トキ); "A" is read through the kana fallback.
    assert phones.split("|") == ["t", "o", "k", "i", "e", "e", "?"]


def test_japanese_only_one_iteration_mark_word_is_glued(monkeypatch: pytest.MonkeyPatch) -> None:
    """The official loop glues the next word only if it is exactly one iteration mark, and then
    skips it: of 時 々 々 the second 々 is a word of its own (read "、" by OpenJTalk, so it goes
    through the kana fallback, here "エー" → e e). A multi-character mark word is not glued."""
    monkeypatch.setattr(ja, "_kana_of", lambda surface: "エー")
    analyser = StandIn([("時", "トキ"), ("々", "、"), ("々", "、")])
    assert ja.japanese_phones("時々々", analyser).split("|") == ["t", "o", "k", "i", "e", "e"]
    analyser = StandIn([("時", "トキ"), ("々々", "、")])
    assert ja.japanese_phones("時々々", analyser).split("|") == ["t", "o", "k", "i", "e", "e"]


def test_japanese_word_initial_long_vowel_takes_previous_word_phoneme() -> None:
    assert ja.readings_to_phones(["カ", "ー"]).split("|") == ["k", "a", "a"]
    with pytest.raises(TextError):
        ja.readings_to_phones(["abc"])


@pytest.fixture()
def fake_dictionary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Three small stand-in dictionary files; the recorded table and archive point at them."""
    import hashlib
    import io
    import tarfile

    contents = {"sys.dic": b"system dictionary", "char.bin": b"chars" * 9, "COPYING": b"licence"}
    monkeypatch.setattr(
        res, "JA_DICT_FILES", {n: (len(d), hashlib.sha256(d).hexdigest()) for n, d in contents.items()}
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in contents.items():
            info = tarfile.TarInfo(f"{res.JA_DICT_NAME}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = buf.getvalue()
    monkeypatch.setattr(res, "JA_DICT_ARCHIVE", (len(archive), hashlib.sha256(archive).hexdigest()))
    downloads: list[str] = []

    def download(url: str, target: Path) -> None:
        downloads.append(url)
        target.write_bytes(archive)

    monkeypatch.setattr(res, "download", download)
    real_bundled = res.bundled_ja_dictionary
    monkeypatch.setattr(res, "bundled_ja_dictionary", lambda: None)  # whatever pyopenjtalk is installed
    monkeypatch.setenv("METIS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    res._VERIFIED.clear()
    return contents, downloads, real_bundled


def test_ja_dictionary_download_is_checked_and_cached(fake_dictionary) -> None:
    contents, downloads, _ = fake_dictionary
    folder = res.fetch_ja_frontend()
    assert folder == res.cache_root() / "ja-frontend" / res.JA_DICT_NAME
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == contents
    assert res.fetch_ja_frontend() == folder and downloads == [res.JA_DICT_URL]  # cached


def test_ja_dictionary_archive_with_another_checksum_is_refused(fake_dictionary, monkeypatch) -> None:
    size, _ = res.JA_DICT_ARCHIVE
    monkeypatch.setattr(res, "JA_DICT_ARCHIVE", (size, "0" * 64))
    with pytest.raises(res.MissingResourceError, match="not the recorded archive"):
        res.fetch_ja_frontend()
    assert not (res.cache_root() / "ja-frontend" / res.JA_DICT_NAME).exists()


def test_ja_dictionary_file_that_changed_is_refused(fake_dictionary) -> None:
    folder = res.fetch_ja_frontend()
    (folder / "sys.dic").write_bytes(b"system dictionarY")  # same size
    res._VERIFIED.clear()
    with pytest.raises(res.MissingResourceError, match="sys.dic is not the official file"):
        res.ja_dictionary_dir()
    (folder / "sys.dic").write_bytes(b"system dictionary")
    (folder / "char.bin").unlink()
    with pytest.raises(res.MissingResourceError, match="char.bin is missing"):
        res.ja_dictionary_dir()


@pytest.mark.parametrize("how", ["env", "argument"])
def test_ja_dictionary_offline_stops_the_download(fake_dictionary, monkeypatch, how) -> None:
    """--offline (which sets HF_HUB_OFFLINE=1) or offline=True: one line, no download attempt,
    a MetisError subclass (MissingModelError), through the Japanese front end too."""
    from metis_cli.errors import MetisError, MissingModelError

    _, downloads, _ = fake_dictionary
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        ja.openjtalk.cache_clear()
        with pytest.raises(MissingModelError) as info:
            ja.japanese_phones("こんにちは")
        ja.openjtalk.cache_clear()
    else:
        with pytest.raises(MetisError) as info:
            res.fetch_ja_frontend(offline=True)
    message = str(info.value)
    assert "\n" not in message and "offline" in message.lower() and "metis download ja-frontend" in message
    assert downloads == []


def test_ja_network_failure_is_one_line(fake_dictionary, monkeypatch) -> None:
    def unreachable(url: str, target: Path) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(res, "download", unreachable)
    with pytest.raises(res.MissingResourceError, match="network unreachable") as info:
        res.fetch_ja_frontend()
    assert "\n" not in str(info.value)


def test_bundled_dictionary_of_pyopenjtalk_is_used_when_official(
    fake_dictionary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pyopenjtalk package holding open_jtalk_dic_utf_8-1.11/ with the recorded files is used
    as is (no download, nothing copied); one whose files differ is ignored."""
    contents, downloads, real_bundled = fake_dictionary
    pkg = tmp_path / "site" / "pyopenjtalk"
    (pkg / res.JA_DICT_NAME).mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    for name, data in contents.items():
        (pkg / res.JA_DICT_NAME / name).write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(res, "bundled_ja_dictionary", real_bundled)
    assert res.bundled_ja_dictionary() == pkg / res.JA_DICT_NAME
    assert res.fetch_ja_frontend() == pkg / res.JA_DICT_NAME and downloads == []
    (pkg / res.JA_DICT_NAME / "COPYING").write_bytes(b"licencE")
    res._VERIFIED.clear()
    assert res.bundled_ja_dictionary() is None
    assert res.fetch_ja_frontend() == res.cache_root() / "ja-frontend" / res.JA_DICT_NAME


def test_recorded_dictionary_table_is_the_official_one() -> None:
    """Nine files, sys.dic 103 073 776 bytes: the official open_jtalk_dic_utf_8-1.11 layout."""
    assert sorted(res.JA_DICT_FILES) == [
        "COPYING", "char.bin", "left-id.def", "matrix.bin", "pos-id.def", "rewrite.def",
        "right-id.def", "sys.dic", "unk.dic",
    ]  # fmt: skip
    assert res.JA_DICT_FILES["sys.dic"][0] == 103_073_776
    assert res.JA_DICT_ARCHIVE[0] == 23_646_843
    assert res.JA_DICT_URL.endswith("v1.11.1/open_jtalk_dic_utf_8-1.11.tar.gz")


@pytest.fixture()
def app() -> typer.Typer:
    from metis_cli.cli import g2p

    app = typer.Typer()
    g2p.register(app)

    @app.callback()
    def main() -> None:
        """Throwaway root so that ``g2p`` is a sub-command."""

    return app


def test_cli_single_text(app: typer.Typer) -> None:
    from metis_cli.text import g2p

    result = CliRunner().invoke(app, ["g2p", "Hello world.", "--language", "en"])
    assert result.exit_code == 0, result.output
    lang, phones, ids = result.stdout.rstrip("\n").split("\t")
    assert (lang, phones) == ("en", g2p("Hello world.", "en")[0])
    assert [int(i) for i in ids.split()] == g2p("Hello world.", "en")[1]


def test_cli_batch_json_with_bad_lines(app: typer.Typer) -> None:
    stdin = "Bonjour tout le monde !\n\n?!\nGuten Morgen.\n"
    result = CliRunner().invoke(app, ["g2p", "--json"], input=stdin)
    assert result.exit_code == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["Bonjour tout le monde !", "", "?!", "Guten Morgen."]
    assert rows[0]["lang"] == "fr" and rows[0]["ids"] and rows[0]["phones"]
    assert rows[3]["lang"] == "de" and rows[3]["ids"]
    assert "error" in rows[1] and "error" in rows[2]
    assert "ids" not in rows[1]


def test_download_ja_frontend_offline_exits_1_with_one_line(tmp_path: Path, monkeypatch) -> None:
    from metis_cli.cli import app as metis_app

    monkeypatch.setattr(res, "bundled_ja_dictionary", lambda: None)  # whatever pyopenjtalk is installed
    result = CliRunner().invoke(
        metis_app,
        ["download", "ja-frontend"],
        env={"HF_HUB_OFFLINE": "1", "METIS_CACHE_DIR": str(tmp_path)},
        catch_exceptions=False,
    )
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "OpenJTalk" in lines[0] and "offline" in lines[0]

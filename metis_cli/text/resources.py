"""Large front-end resources kept out of the repository: fetched on demand into the cache.

Chinese: ``chinese_lexicon.txt`` and ``poly_bert_model.onnx`` of the official repository, taken
from the PyPI source distribution ``maskgct==0.0.19`` (byte-identical; verified by git blob id).
Japanese: the OpenJTalk dictionary ``open_jtalk_dic_utf_8-1.11`` that ``pyopenjtalk`` uses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from metis_cli.errors import TextError

log = logging.getLogger(__name__)

ZH_PACKAGE = ("maskgct", "0.0.19")
_ZH_PREFIX = "maskgct/maskgct/tts/maskgct/g2p/sources/"
JA_DICT_URL = "https://github.com/r9y9/open_jtalk/releases/download/v1.11.1/open_jtalk_dic_utf_8-1.11.tar.gz"
JA_DICT_NAME = "open_jtalk_dic_utf_8-1.11"
# Files every OpenJTalk dictionary directory holds (checked in place of a recorded checksum).
JA_DICT_FILES = ("char.bin", "matrix.bin", "sys.dic", "unk.dic", "left-id.def", "right-id.def")


@dataclass(frozen=True)
class Resource:
    """One cached file: its name, size in bytes, git blob id and path inside the sdist."""

    name: str
    size: int
    blob_id: str
    member: str


ZH_RESOURCES = (
    Resource(
        "chinese_lexicon.txt", 14_779_443, "7dc9e466816b0d4474c785b8326c3f5d1ae0d555", "chinese_lexicon.txt"
    ),
    Resource(
        "poly_bert_model.onnx",
        76_583_333,
        "80c1cb3be59fea9723fc186ad6eea74194a93275",
        "g2p_chinese_model/poly_bert_model.onnx",
    ),
)


def cache_root() -> Path:
    """``$METIS_CACHE_DIR`` or ``~/.cache/metis``."""
    env = os.environ.get("METIS_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "metis"


def git_blob_id(path: Path) -> str:
    """sha1 of ``b"blob <size>\\0" + content`` (what ``git hash-object`` prints)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def zh_frontend_dir(dest: Path | None = None) -> Path:
    """Return the folder holding the Chinese resources, or raise a one-line ``TextError``."""
    folder = dest or cache_root() / "zh-frontend"
    for res in ZH_RESOURCES:
        path = folder / res.name
        if not path.is_file() or path.stat().st_size != res.size:
            raise TextError(
                f"Chinese front-end resource {path} is missing or incomplete: "
                "run `metis download zh-frontend`"
            )
    return folder


def _pypi_sdist_url(name: str, version: str) -> str:
    """URL of the sdist: PyPI's JSON API, else the Simple API (PEP 691) that pip itself uses."""
    try:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/{version}/json", timeout=60) as resp:
            meta = json.load(resp)
        for entry in meta["urls"]:
            if entry["packagetype"] == "sdist":
                return entry["url"]
    except OSError as exc:
        log.info("PyPI JSON API unavailable (%s); trying the Simple API", exc)
    request = urllib.request.Request(
        f"https://pypi.org/simple/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        index = json.load(resp)
    for entry in index["files"]:
        if entry["filename"] == f"{name}-{version}.tar.gz":
            return entry["url"]
    raise TextError(f"PyPI has no source distribution for {name}=={version}")


def _download(url: str, target: Path) -> None:
    log.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=120) as resp, target.open("wb") as fh:
        shutil.copyfileobj(resp, fh, 1 << 20)


def fetch_zh_frontend(dest: Path | None = None) -> Path:
    """Ensure the Chinese resources are in ``dest`` (default: the cache); return that folder.

    Downloads the ``maskgct==0.0.19`` sdist from PyPI, extracts only the two files and keeps
    them only if their git blob ids match the official ones.
    """
    folder = dest or cache_root() / "zh-frontend"
    try:
        return zh_frontend_dir(folder)
    except TextError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            archive = Path(tmp) / "sdist.tar.gz"
            _download(_pypi_sdist_url(*ZH_PACKAGE), archive)
            with tarfile.open(archive, "r:gz") as tar:
                members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
                for res in ZH_RESOURCES:
                    member = members.get(_ZH_PREFIX + res.member)
                    if member is None:
                        raise TextError(f"{res.member} not found in {'=='.join(ZH_PACKAGE)} sdist")
                    part = Path(tmp) / res.name
                    with tar.extractfile(member) as src, part.open("wb") as dst:  # type: ignore[union-attr]
                        shutil.copyfileobj(src, dst, 1 << 20)
                    blob = git_blob_id(part)
                    if blob != res.blob_id:
                        raise TextError(f"{res.name}: git blob id {blob} differs from official {res.blob_id}")
                    os.replace(part, folder / res.name)
    except OSError as exc:  # URLError is an OSError
        raise TextError(f"cannot fetch the Chinese front-end resources from PyPI: {exc}") from exc
    return zh_frontend_dir(folder)


def ja_dictionary_dir(dest: Path | None = None) -> Path:
    """Return the cached OpenJTalk 1.11 dictionary folder, or raise a one-line ``TextError``."""
    folder = (dest or cache_root() / "ja-frontend") / JA_DICT_NAME
    missing = [name for name in JA_DICT_FILES if not (folder / name).is_file()]
    if missing:
        raise TextError(
            f"OpenJTalk dictionary {folder} is missing or incomplete ({', '.join(missing)}): "
            "run `metis download ja-frontend`"
        )
    return folder


def fetch_ja_frontend(dest: Path | None = None) -> Path:
    """Ensure the OpenJTalk 1.11 dictionary is cached (the archive pyopenjtalk downloads).

    No checksum is recorded (the archive could not be obtained where this was written); the
    download is accepted when it unpacks to a folder holding every file in ``JA_DICT_FILES``.
    """
    root = dest or cache_root() / "ja-frontend"
    try:
        return ja_dictionary_dir(root)
    except TextError:
        pass
    root.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            archive = Path(tmp) / "dic.tar.gz"
            _download(JA_DICT_URL, archive)
            with tarfile.open(archive, "r:gz") as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")
                else:  # Python < 3.10.12
                    tar.extractall(tmp)  # noqa: S202
            unpacked = Path(tmp) / JA_DICT_NAME
            ja_dictionary_dir(Path(tmp))  # structure check before moving into place
            os.replace(unpacked, root / JA_DICT_NAME)
    except OSError as exc:
        raise TextError(f"cannot fetch the OpenJTalk dictionary from {JA_DICT_URL}: {exc}") from exc
    return ja_dictionary_dir(root)

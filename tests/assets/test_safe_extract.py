"""Archive extraction of downloaded resources never writes outside its folder."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from metis_cli.text.resources import MissingResourceError, safe_extract


def make_tar(path: Path, members: list[tuple[str, bytes | None, str]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data or b"")
                tar.addfile(info, io.BytesIO(data or b""))
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
    return path


@pytest.mark.parametrize(
    "member",
    [("../evil.txt", b"x", "file"), ("/abs/evil.txt", b"x", "file"), ("dic/link", None, "symlink")],
)
def test_unsafe_members_are_refused(tmp_path, member):
    archive = make_tar(tmp_path / "a.tar.gz", [("dic/ok.txt", b"ok", "file"), member])
    out = tmp_path / "out"
    out.mkdir()
    with tarfile.open(archive) as tar, pytest.raises(MissingResourceError, match="archive member"):
        safe_extract(tar, out)
    assert not (tmp_path / "evil.txt").exists() and list(out.iterdir()) == []  # nothing extracted


def test_regular_members_are_extracted(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", [("dic/a.txt", b"A", "file"), ("dic/sub/b.txt", b"B", "file")])
    out = tmp_path / "out"
    out.mkdir()
    with tarfile.open(archive) as tar:
        safe_extract(tar, out)
    assert (out / "dic" / "a.txt").read_bytes() == b"A" and (
        out / "dic" / "sub" / "b.txt"
    ).read_bytes() == b"B"

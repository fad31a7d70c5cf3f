"""A folder as one pack: the file list, the bytes, materialising it back (every file
checked against its SHA-256), and the paths and packs refused."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from p2pagent.errors import InvalidArgument
from p2pagent.inference.hf import pack


def _folder(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "sub" / "config.json").write_text("{}")
    (root / "model.safetensors").write_bytes(os.urandom(3000))
    (root / ".gitattributes").write_text("hidden: left out")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("x")
    return root


def _write(root: Path, out: Path) -> tuple[pack.PackedFile, ...]:
    files = pack.describe_folder(root)
    with out.open("wb") as f:
        for piece in pack.pack_pieces(root, files):
            f.write(piece)
    return files


def test_a_folder_packs_and_unpacks_to_the_same_files(tmp_path: Path) -> None:
    root = _folder(tmp_path / "m")
    p = tmp_path / "m.hfpack"
    files = _write(root, p)
    assert [f.path for f in files] == ["config.json", "model.safetensors", "sub/config.json"]
    assert files[1].sha256 == hashlib.sha256((root / "model.safetensors").read_bytes()).hexdigest()
    assert p.stat().st_size == pack.pack_size(files)
    with p.open("rb") as f:
        listed, offset = pack.read_index(f)
    assert listed == files and offset == len(pack.pack_header(files))
    out = pack.materialise(p, tmp_path / "out", files)
    for f in files:
        assert (out / f.path).read_bytes() == (root / f.path).read_bytes()
    assert not (out / ".gitattributes").exists()
    assert pack.materialise(p, out, files) == out  # complete: reused


def test_a_file_altered_in_the_pack_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    root = _folder(tmp_path / "m")
    p = tmp_path / "m.hfpack"
    files = _write(root, p)
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(InvalidArgument, match="does not match its SHA-256"):
        pack.materialise(p, tmp_path / "out", files)
    assert list(tmp_path.glob("out*")) == [] and list(tmp_path.glob(".tmp-*")) == []


def test_two_threads_unpacking_the_same_pack_at_once_both_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inference cache and Generate may unpack one version at the same moment in one
    process. Forced interleaving: A has written its first file when B starts, and A
    finishes while B is inside; with one temporary folder per process, B's start removed
    A's first file and A published a folder without it."""
    root = _folder(tmp_path / "m")
    p = tmp_path / "m.hfpack"
    files = _write(root, p)
    a_wrote_first, b_inside, a_done = threading.Event(), threading.Event(), threading.Event()
    files_begun: dict[str, int] = {}
    real_read_index, real_hashlib = pack.read_index, pack.hashlib

    class Hashlib:
        @staticmethod
        def sha256(*args: Any) -> Any:
            me = threading.current_thread().name
            files_begun[me] = files_begun.get(me, 0) + 1
            if me == "A" and files_begun[me] == 2:
                a_wrote_first.set()
                assert b_inside.wait(10)
            return real_hashlib.sha256(*args)

    def read_index(src: Any) -> Any:
        if threading.current_thread().name == "B":
            b_inside.set()
            assert a_done.wait(10)
        return real_read_index(src)

    monkeypatch.setattr(pack, "hashlib", Hashlib)
    monkeypatch.setattr(pack, "read_index", read_index)
    outs: list[Path] = []

    def unpack() -> None:
        outs.append(pack.materialise(p, tmp_path / "out", files))
        if threading.current_thread().name == "A":
            a_done.set()

    a = threading.Thread(target=unpack, name="A")
    a.start()
    assert a_wrote_first.wait(10)
    b = threading.Thread(target=unpack, name="B")
    b.start()
    a.join(20)
    b.join(20)
    assert outs == [tmp_path / "out"] * 2
    for f in files:
        assert (tmp_path / "out" / f.path).read_bytes() == (root / f.path).read_bytes()
    assert list(tmp_path.glob(".tmp-*")) == []


def test_a_pack_whose_list_differs_from_the_manifest_is_refused(tmp_path: Path) -> None:
    root = _folder(tmp_path / "m")
    p = tmp_path / "m.hfpack"
    files = _write(root, p)
    other = (*files[:-1], pack.PackedFile(files[-1].path, files[-1].size, "0" * 64))
    with pytest.raises(InvalidArgument, match="differs from the one its manifest names"):
        pack.materialise(p, tmp_path / "out", other)


@pytest.mark.parametrize(
    "path", ["../x", "/etc/passwd", "a/../../b", ".hidden", "a//b", "a\\b", "a/b/c/d/e", ""]
)
def test_paths_that_could_leave_the_folder_are_refused(path: str) -> None:
    with pytest.raises(InvalidArgument):
        pack.check_rel_path(path)


def test_an_index_from_a_peer_is_checked_before_use() -> None:
    bad = b'{"files":[{"path":"../../etc/x","size":1,"sha256":"' + b"0" * 64 + b'"}]}'
    stream = io.BytesIO(pack.MAGIC + len(bad).to_bytes(8, "little") + bad)
    with pytest.raises(InvalidArgument, match="not a plain relative path"):
        pack.read_index(stream)
    with pytest.raises(InvalidArgument, match="no pack header"):
        pack.read_index(io.BytesIO(b"PK\x03\x04" + b"\0" * 20))


def test_symlinks_are_refused(tmp_path: Path) -> None:
    root = _folder(tmp_path / "m")
    (root / "link.json").symlink_to(root / "config.json")
    with pytest.raises(InvalidArgument, match="symbolic link"):
        pack.list_folder(root)

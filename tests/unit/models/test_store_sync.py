"""Pulls with deferred fsync: one fsync of the version's file before its index names a chunk;
a full disk at sync; the move from the chunk-file layout."""

from __future__ import annotations

import errno
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from p2pagent.errors import ResourceExhausted
from p2pagent.models.config import ModelsConfig
from p2pagent.models.store import ChunkStore

from .conftest import CHUNK
from .test_store import DATA, manifest_of, piece

CFG = ModelsConfig(chunk_size=CHUNK, fsync=True)


def test_a_pull_completes_only_once_sealed_and_begin_pull_is_idempotent(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, CFG)
    m = manifest_of(DATA)
    store.begin_pull(m)
    for i in range(6):
        assert store.write_chunk(m.manifest_id, i, piece(DATA, i), sync=False)
    assert store.present(m.manifest_id) == set(range(6))
    assert not store.is_complete(m.manifest_id)  # on disk, not yet durable
    store.seal(m.manifest_id)
    assert store.is_complete(m.manifest_id)
    store.begin_pull(m)  # complete already: nothing to do
    assert store.is_complete(m.manifest_id)


def test_sync_is_one_fsync_of_the_file_before_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ChunkStore(tmp_path, CFG)
    m = manifest_of(DATA)
    store.begin_pull(m)
    for i in range(3):
        store.write_chunk(m.manifest_id, i, piece(DATA, i), sync=False)
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync " + Path(os.readlink(f"/proc/self/fd/{fd}")).suffix)
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append("rename " + Path(dst).suffix)
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    assert store.sync_chunks(m.manifest_id, [0, 1, 2]) == 3
    # The data first (one file, not one per chunk), then the index that names it.
    assert events[0] == "fsync .partial"
    assert events.index("rename .index") > 0
    assert events.count("fsync .partial") == 1
    events.clear()
    assert store.sync_chunks(m.manifest_id, [0, 1, 2]) == 0  # already durable: no fsync
    assert events == []


def test_delete_removes_the_partial_file_and_its_index(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, CFG)
    m = manifest_of(DATA)
    store.begin_pull(m)
    store.write_chunk(m.manifest_id, 0, piece(DATA, 0))
    store.delete(m.manifest_id)
    assert list((tmp_path / "versions").iterdir()) == []
    assert ChunkStore(tmp_path, CFG).manifests() == []


def test_a_write_to_a_version_deleted_meanwhile_is_not_found(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, CFG)
    m = manifest_of(DATA)
    store.begin_pull(m)
    store.delete(m.manifest_id)
    with pytest.raises(Exception, match="not known"):
        store.write_chunk(m.manifest_id, 0, piece(DATA, 0), sync=False)


def test_disk_full_at_sync_is_resource_exhausted_and_not_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ChunkStore(tmp_path, CFG)
    m = manifest_of(DATA)
    store.begin_pull(m)
    for i in range(6):
        store.write_chunk(m.manifest_id, i, piece(DATA, i), sync=False)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ResourceExhausted, match="disk full"):
        store.seal(m.manifest_id)
    monkeypatch.undo()
    assert not store.is_complete(m.manifest_id)
    assert ChunkStore(tmp_path, CFG).present(m.manifest_id) == set()
    store.seal(m.manifest_id)  # space again
    assert store.is_complete(m.manifest_id)


def old_layout(root: Path, data: bytes, chunks: list[int], assembled: bool) -> str:
    """A store as the chunk-file layout left it; returns the version's id."""
    m = manifest_of(data)
    (root / "manifests").mkdir(parents=True, exist_ok=True)
    (root / "manifests" / f"{m.manifest_id}.json").write_bytes(m.encode())
    for i in chunks:
        digest = m.chunk_hashes[i]
        (root / "chunks" / digest[:2]).mkdir(parents=True, exist_ok=True)
        (root / "chunks" / digest[:2] / digest).write_bytes(piece(data, i))
    (root / "files").mkdir(exist_ok=True)
    (root / "unsynced").mkdir(exist_ok=True)
    if assembled:
        (root / "files" / f"{m.manifest_id}.safetensors").write_bytes(data)
        (root / "files" / f"{m.manifest_id}.safetensors.d").mkdir()
    return m.manifest_id


def test_an_old_store_with_assembled_files_moves_them(tmp_path: Path) -> None:
    mid = old_layout(tmp_path, DATA, list(range(6)), assembled=True)
    store = ChunkStore(tmp_path, CFG)
    assert store.is_complete(mid)
    assert store.assemble(mid).read_bytes() == DATA
    assert (tmp_path / "versions" / f"{mid}.safetensors.d").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifests", "versions"]


def test_an_old_store_keeps_only_chunk_files_that_verify(tmp_path: Path) -> None:
    mid = old_layout(tmp_path, DATA, [0, 1, 3], assembled=False)
    digest = manifest_of(DATA).chunk_hashes[1]
    (tmp_path / "chunks" / digest[:2] / digest).write_bytes(b"rot" + piece(DATA, 1)[3:])
    store = ChunkStore(tmp_path, CFG)
    assert store.present(mid) == {0, 3}
    assert not (tmp_path / "chunks").exists()
    for i in (1, 2, 4, 5):
        store.write_chunk(mid, i, piece(DATA, i))
    assert hashlib.sha256(store.assemble(mid).read_bytes()).hexdigest() == (
        hashlib.sha256(DATA).hexdigest()
    )


def test_chunks_arriving_twice_at_once_write_once_and_the_file_ends_at_its_size(
    tmp_path: Path,
) -> None:
    """Endgame duplicates: every chunk written by two threads at the same time (past the
    page cache, the short last chunk padded), then sealed: the file is exactly the data."""
    store = ChunkStore(tmp_path, CFG)
    m = manifest_of(DATA)
    store.begin_pull(m)
    jobs = [i for i in range(m.chunk_count) for _ in range(2)]

    def write(i: int) -> bool:
        return store.write_chunk(m.manifest_id, i, piece(DATA, i), sync=False, direct=True)

    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(write, jobs))
    assert all(done)
    store.seal(m.manifest_id)
    path = store.assemble(m.manifest_id)
    assert path.stat().st_size == len(DATA) and path.read_bytes() == DATA
    assert store._writing[m.manifest_id] == set()

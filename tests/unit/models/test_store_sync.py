"""Pulls with deferred fsync: a marker while chunks may be unsynced, checks after a crash."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from p2pagent.errors import FailedPrecondition, ResourceExhausted
from p2pagent.models.config import ModelsConfig
from p2pagent.models.store import ChunkStore

from .conftest import CHUNK
from .test_store import DATA, manifest_of

CFG = ModelsConfig(chunk_size=CHUNK, fsync=True)


def piece(i: int) -> bytes:
    return DATA[i * CHUNK : (i + 1) * CHUNK]


def markers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "unsynced").iterdir())


def test_unsynced_writes_need_a_pull_and_complete_only_once_sealed(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, CFG)
    m = manifest_of(DATA)
    store.put_manifest(m)
    with pytest.raises(FailedPrecondition, match="begin_pull"):
        store.write_chunk(m.manifest_id, 0, piece(0), sync=False)
    store.begin_pull(m)
    assert markers(tmp_path) == [m.manifest_id]
    for i in range(6):
        assert store.write_chunk(m.manifest_id, i, piece(i), sync=False)
    assert store.present(m.manifest_id) == set(range(6))
    assert not store.is_complete(m.manifest_id)  # on disk, not yet durable
    store.seal(m.manifest_id)
    assert markers(tmp_path) == []
    assert store.is_complete(m.manifest_id)
    store.begin_pull(m)  # complete already: nothing to pull, no marker
    assert markers(tmp_path) == []


def test_sync_fsyncs_each_file_once_then_its_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ChunkStore(tmp_path, CFG)
    m = manifest_of(DATA)
    store.begin_pull(m)
    synced: list[int] = []
    real_fsync = os.fsync
    dirs: list[Path] = []

    def count_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    def count_dir(d: Path) -> None:
        dirs.append(d)

    for i in range(3):
        store.write_chunk(m.manifest_id, i, piece(i), sync=False)
    monkeypatch.setattr(os, "fsync", count_fsync)
    monkeypatch.setattr("p2pagent.models.store.fsync_dir", count_dir)
    assert store.sync_chunks(m.manifest_id, [0, 1, 2]) == 3
    assert len(synced) == 3
    assert {d.name for d in dirs} >= {m.chunk_hashes[i][:2] for i in range(3)} | {"chunks"}
    assert store.sync_chunks(m.manifest_id, [0, 1, 2]) == 0  # already durable


def test_restart_checks_an_unsealed_pull_and_drops_garbage(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, CFG)
    m = manifest_of(DATA)
    store.begin_pull(m)
    for i in range(6):
        store.write_chunk(m.manifest_id, i, piece(i), sync=False)
    # A power cut before the seal: a renamed chunk file whose data never reached the disk.
    bad = store.chunk_path(m.chunk_hashes[4])
    bad.write_bytes(b"\0" * len(piece(4)))
    restarted = ChunkStore(tmp_path, CFG)
    assert not restarted.is_complete(m.manifest_id)
    assert restarted.missing(m.manifest_id) == [4]
    assert not bad.exists()
    assert markers(tmp_path) == [m.manifest_id]
    restarted.begin_pull(m)
    restarted.write_chunk(m.manifest_id, 4, piece(4), sync=False)
    restarted.seal(m.manifest_id)
    assert restarted.is_complete(m.manifest_id)
    assert restarted.assemble(m.manifest_id).read_bytes() == DATA


def test_restart_seals_an_intact_unsealed_pull(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, CFG)
    m = manifest_of(DATA)
    store.begin_pull(m)
    for i in range(6):
        store.write_chunk(m.manifest_id, i, piece(i), sync=False)
    restarted = ChunkStore(tmp_path, CFG)  # killed before the seal
    assert restarted.is_complete(m.manifest_id)
    assert markers(tmp_path) == []


def test_delete_removes_the_marker(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, CFG)
    m = manifest_of(DATA)
    store.begin_pull(m)
    store.delete(m.manifest_id)
    assert markers(tmp_path) == []
    assert ChunkStore(tmp_path, CFG).manifests() == []


def test_disk_full_at_sync_is_resource_exhausted_and_not_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ChunkStore(tmp_path, CFG)
    m = manifest_of(DATA)
    store.begin_pull(m)
    for i in range(6):
        store.write_chunk(m.manifest_id, i, piece(i), sync=False)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(ResourceExhausted, match="disk full"):
        store.seal(m.manifest_id)
    monkeypatch.undo()
    assert not store.is_complete(m.manifest_id)
    assert markers(tmp_path) == [m.manifest_id]  # still to be checked after a restart
    store.seal(m.manifest_id)  # space freed: the retry seals
    assert store.is_complete(m.manifest_id)

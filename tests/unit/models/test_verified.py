"""Serving without re-hashing chunk files this process checked recently and that are unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2pagent.errors import NotFound
from p2pagent.models.config import ModelsConfig
from p2pagent.models.store import ChunkStore
from p2pagent.models.verified import FileIdentity, VerifiedChunks

from .conftest import CHUNK
from .test_store import DATA, manifest_of, pull_into, rot

A = FileIdentity(inode=1, size=10, mtime_ns=100)


def test_trusted_only_while_unchanged_and_young() -> None:
    seen = VerifiedChunks(reverify_after_s=10.0)
    assert not seen.trusted("d", A, 0.0)
    seen.note("d", A, 0.0)
    assert seen.trusted("d", A, 9.9)
    assert not seen.trusted("d", A, 10.0)  # too old: hash again
    assert not seen.trusted("d", A, 5.0)  # ...and the entry is gone until noted again
    seen.note("d", A, 20.0)
    for changed in (
        FileIdentity(2, 10, 100),  # replaced by another file
        FileIdentity(1, 11, 100),  # grew
        FileIdentity(1, 10, 101),  # rewritten
    ):
        assert not seen.trusted("d", changed, 21.0)
        seen.note("d", A, 20.0)
    assert not seen.trusted("d", A, 19.0)  # a clock that stepped back proves nothing


def test_bounded_oldest_out_and_off_switch() -> None:
    seen = VerifiedChunks(reverify_after_s=10.0, max_entries=2)
    for d in ("a", "b", "c"):
        seen.note(d, A, 0.0)
    assert not seen.trusted("a", A, 1.0)
    assert seen.trusted("b", A, 1.0) and seen.trusted("c", A, 1.0)
    seen.forget("b")
    assert not seen.trusted("b", A, 1.0)
    off = VerifiedChunks(reverify_after_s=0.0)
    off.note("a", A, 0.0)
    assert not off.trusted("a", A, 0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_store_rehashes_a_rotten_file_once_the_window_ends(tmp_path: Path) -> None:
    clock = Clock()
    cfg = ModelsConfig(chunk_size=CHUNK, fsync=False, reverify_after_s=60.0)
    store = ChunkStore(tmp_path, cfg, clock=clock)
    m = manifest_of(DATA)
    pull_into(store, m, DATA, range(6))
    # Rot that keeps the file's identity (same inode, size, mtime): invisible to the cache.
    rot(store.assemble(m.manifest_id), CHUNK, keep_mtime=True)
    assert store.read_chunk(m.manifest_id, 1).startswith(b"rotten")  # within the window
    clock.now = 60.0
    with pytest.raises(NotFound, match="corrupt on disk"):
        store.read_chunk(m.manifest_id, 1)
    assert store.missing(m.manifest_id) == [1]


def test_store_rehashes_a_changed_file_at_once(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, ModelsConfig(chunk_size=CHUNK, fsync=False), clock=Clock())
    m = manifest_of(DATA)
    pull_into(store, m, DATA, range(6))
    path = store.assemble(m.manifest_id)
    st = path.stat()
    rot(path, 0)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(NotFound, match="corrupt on disk"):
        store.read_chunk(m.manifest_id, 0)


def test_a_good_read_is_remembered(tmp_path: Path) -> None:
    clock = Clock()
    cfg = ModelsConfig(chunk_size=CHUNK, fsync=False, reverify_after_s=60.0)
    pull_into(ChunkStore(tmp_path, cfg, clock=clock), manifest_of(DATA), DATA, range(6))
    store = ChunkStore(tmp_path, cfg, clock=clock)  # a new process: nothing remembered
    m = manifest_of(DATA)
    rot(store.assemble(m.manifest_id), 2 * CHUNK, keep_mtime=True)
    with pytest.raises(NotFound, match="corrupt on disk"):
        store.read_chunk(m.manifest_id, 2)
    assert store.read_chunk(m.manifest_id, 3) == DATA[3 * CHUNK : 4 * CHUNK]
    # Read once, checked: a later rot within the window goes unseen, as for a fresh write.
    rot(store._files[m.manifest_id].partial, 3 * CHUNK, keep_mtime=True)
    assert store.read_chunk(m.manifest_id, 3).startswith(b"rotten")

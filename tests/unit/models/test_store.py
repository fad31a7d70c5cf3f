"""Chunk store: atomic writes, dedupe, resume, GC, ENOSPC, verification, assembly."""

from __future__ import annotations

import errno
import hashlib
import io
import os
from pathlib import Path

import pytest

from p2pagent.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from p2pagent.models.config import ModelsConfig
from p2pagent.models.manifest import Manifest, build_manifest
from p2pagent.models.publish import publish_file
from p2pagent.models.store import ChunkStore

from .conftest import CHUNK, blob

DATA = blob(CHUNK * 5 + 123, seed=1)


def manifest_of(data: bytes, version: int = 1, name: str = "m") -> Manifest:
    return build_manifest(
        name, "safetensors", io.BytesIO(data), version=version, created_unix=10.0,
        chunk_size=CHUNK,
    )  # fmt: skip


def chunk_files(store: ChunkStore) -> list[Path]:
    return [p for p in (store.root / "chunks").rglob("*") if p.is_file()]


def pull_into(store: ChunkStore, m: Manifest, data: bytes, indices: range | list[int]) -> None:
    store.put_manifest(m)
    for i in indices:
        assert store.write_chunk(m.manifest_id, i, data[i * CHUNK : (i + 1) * CHUNK])


def test_put_chunk_is_content_addressed_and_fanned_out(store: ChunkStore) -> None:
    digest = store.put_chunk(b"hello")
    assert digest == hashlib.sha256(b"hello").hexdigest()
    path = store.chunk_path(digest)
    assert path.parent.name == digest[:2]
    assert path.read_bytes() == b"hello"
    assert store.put_chunk(b"hello") == digest  # idempotent
    assert chunk_files(store) == [path]


def test_failure_between_write_and_rename_leaves_no_chunk(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(src: object, dst: object) -> None:
        raise RuntimeError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.put_chunk(b"payload")
    monkeypatch.undo()
    assert not store.has_chunk(hashlib.sha256(b"payload").hexdigest())
    assert chunk_files(store) == []  # the temporary file went too


def test_killed_writer_leaves_invisible_temp_cleared_on_restart(tmp_path: Path) -> None:
    cfg = ModelsConfig(fsync=False)
    store = ChunkStore(tmp_path, cfg)
    m = manifest_of(DATA)
    pull_into(store, m, DATA, [0])
    # A process killed after writing chunk 1's temporary file, before the rename.
    digest = m.chunk_hashes[1]
    fan = store.chunk_path(digest).parent
    fan.mkdir(exist_ok=True)
    tmp = fan / f".tmp-{digest}.999.0.deadbeef"
    tmp.write_bytes(DATA[CHUNK : CHUNK + 10])  # partial content
    assert store.present(m.manifest_id) == {0}
    assert store.gc().chunks_removed == 0  # gc never touches temporaries of live writers
    reopened = ChunkStore(tmp_path, cfg)
    assert not tmp.exists()
    assert reopened.present(m.manifest_id) == {0}


def test_resume_from_chunks_on_disk(tmp_path: Path) -> None:
    cfg = ModelsConfig(fsync=False)
    store = ChunkStore(tmp_path, cfg)
    m = manifest_of(DATA)
    pull_into(store, m, DATA, [0, 2, 5])
    assert not store.is_complete(m.manifest_id)
    restarted = ChunkStore(tmp_path, cfg)
    assert restarted.get_manifest(m.manifest_id) == m
    assert restarted.present(m.manifest_id) == {0, 2, 5}
    assert restarted.missing(m.manifest_id) == [1, 3, 4]
    pull_into(restarted, m, DATA, [1, 3, 4])
    assert restarted.is_complete(m.manifest_id)
    assert restarted.assemble(m.manifest_id).read_bytes() == DATA


def test_write_chunk_verifies(store: ChunkStore) -> None:
    m = manifest_of(DATA)
    with pytest.raises(NotFound, match="not known"):
        store.write_chunk(m.manifest_id, 0, DATA[:CHUNK])
    store.put_manifest(m)
    assert not store.write_chunk(m.manifest_id, 0, DATA[1 : CHUNK + 1])
    assert not store.write_chunk(m.manifest_id, 99, b"x")
    assert chunk_files(store) == []


def test_dedupe_across_versions(store: ChunkStore) -> None:
    v2_data = DATA[: CHUNK * 5] + b"new tail"
    v1 = manifest_of(DATA, version=1)
    v2 = manifest_of(v2_data, version=2)
    pull_into(store, v1, DATA, range(6))
    pull_into(store, v2, v2_data, range(6))
    assert len(chunk_files(store)) == 7  # five shared, two distinct tails
    assert store.is_complete(v1.manifest_id) and store.is_complete(v2.manifest_id)


def test_identical_chunks_within_a_version_stored_once(store: ChunkStore) -> None:
    data = b"\x00" * (CHUNK * 4)
    m = manifest_of(data)
    pull_into(store, m, data, [0])
    assert store.present(m.manifest_id) == {0, 1, 2, 3}
    assert len(chunk_files(store)) == 1
    assert store.assemble(m.manifest_id).read_bytes() == data


def test_delete_and_gc(store: ChunkStore) -> None:
    v2_data = DATA[: CHUNK * 5] + b"new tail"
    v1, v2 = manifest_of(DATA, 1), manifest_of(v2_data, 2)
    pull_into(store, v1, DATA, range(6))
    pull_into(store, v2, v2_data, range(6))
    v1_file = store.assemble(v1.manifest_id)
    store.put_chunk(b"stray")  # unreferenced garbage
    store.delete(v1.manifest_id)
    assert not v1_file.exists()
    with pytest.raises(NotFound):
        store.delete(v1.manifest_id)
    report = store.gc()
    assert report.chunks_removed == 2  # v1's tail and the stray chunk
    assert report.bytes_freed == 123 + len(b"stray")
    assert len(chunk_files(store)) == 6
    assert store.assemble(v2.manifest_id).read_bytes() == v2_data
    assert store.gc().chunks_removed == 0
    assert [m.manifest_id for m in store.manifests()] == [v2.manifest_id]


def test_gc_removes_orphan_assembled_files(store: ChunkStore) -> None:
    orphan = store.root / "files" / f"{'a' * 64}.pt"
    orphan.write_bytes(b"old")
    assert store.gc().files_removed == 1
    assert not orphan.exists()


def test_gc_spares_open_staging(store: ChunkStore) -> None:
    staging = store.staging()
    digest = staging.put(b"upload in progress")
    assert store.gc().chunks_removed == 0
    assert store.has_chunk(digest)
    assert staging.abort() == 1
    assert not store.has_chunk(digest)


def test_disk_full_is_resource_exhausted_and_leaves_nothing(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = manifest_of(DATA)
    store.put_manifest(m)

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(ResourceExhausted, match=r"disk full .* free space"):
        store.write_chunk(m.manifest_id, 0, DATA[:CHUNK])
    m2 = manifest_of(DATA, version=2)
    with pytest.raises(ResourceExhausted):
        store.put_manifest(m2)
    monkeypatch.undo()
    assert chunk_files(store) == []
    assert not store.has_manifest(m2.manifest_id)
    assert sorted(p.name for p in (store.root / "manifests").iterdir()) == [f"{m.manifest_id}.json"]


def test_other_os_errors_propagate(store: ChunkStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int, data: object) -> int:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "write", broken)
    with pytest.raises(OSError, match="I/O error"):
        store.put_chunk(b"x")
    monkeypatch.undo()
    assert chunk_files(store) == []


def test_read_chunk_serves_and_detects_rot(tmp_path: Path) -> None:
    # Hash on every read: the rot below keeps the file's inode and size, and may keep its
    # mtime (coarse clock); test_verified covers the window that skips the hash.
    store = ChunkStore(tmp_path, ModelsConfig(chunk_size=CHUNK, fsync=False, reverify_after_s=0))
    m = manifest_of(DATA)
    pull_into(store, m, DATA, range(6))
    assert store.read_chunk(m.manifest_id, 5) == DATA[5 * CHUNK :]
    assert [i for i, _ in store.iter_chunks(m.manifest_id, [3, 1])] == [3, 1]
    with pytest.raises(InvalidArgument, match="out of range"):
        store.read_chunk(m.manifest_id, 6)
    assert store.is_complete(m.manifest_id)
    path = store.chunk_path(m.chunk_hashes[2])
    path.write_bytes(b"rotten" + path.read_bytes()[6:])
    with pytest.raises(NotFound, match="corrupt on disk"):
        store.read_chunk(m.manifest_id, 2)
    assert not path.exists()
    assert not store.is_complete(m.manifest_id)
    assert store.missing(m.manifest_id) == [2]
    with pytest.raises(NotFound, match="not on this node"):
        store.read_chunk(m.manifest_id, 2)


def test_read_without_verification(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, ModelsConfig(fsync=False, verify_on_read=False))
    m = manifest_of(DATA)
    pull_into(store, m, DATA, range(6))
    store.chunk_path(m.chunk_hashes[0]).write_bytes(b"bad")
    assert store.read_chunk(m.manifest_id, 0) == b"bad"  # the puller's check catches it


def test_assemble_refuses_incomplete_and_corrupt(store: ChunkStore) -> None:
    m = manifest_of(DATA)
    pull_into(store, m, DATA, [0, 1])
    with pytest.raises(FailedPrecondition, match="4 of 6 chunks missing"):
        store.assemble(m.manifest_id)
    pull_into(store, m, DATA, range(2, 6))
    store.chunk_path(m.chunk_hashes[4]).write_bytes(b"x" * CHUNK)
    with pytest.raises(FailedPrecondition, match="corrupt on disk"):
        store.assemble(m.manifest_id)
    assert list((store.root / "files").iterdir()) == []
    assert store.missing(m.manifest_id) == [4]


def test_assemble_is_cached_and_suffixed(store: ChunkStore) -> None:
    m = manifest_of(DATA)
    pull_into(store, m, DATA, range(6))
    path = store.assemble(m.manifest_id)
    assert path.name == f"{m.manifest_id}.safetensors"
    assert store.assemble(m.manifest_id) == path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == m.sha256


def test_streaming_reader(store: ChunkStore) -> None:
    m = manifest_of(DATA)
    pull_into(store, m, DATA, range(6))
    with store.open_reader(m.manifest_id) as r:
        assert r.read(10) == DATA[:10]
        assert r.read() == DATA[10:]
    with store.open_reader(m.manifest_id) as r:
        assert b"".join(iter(lambda: r.read(1000), b"")) == DATA


def test_unreadable_manifest_file_is_ignored(tmp_path: Path) -> None:
    cfg = ModelsConfig(fsync=False)
    store = ChunkStore(tmp_path, cfg)
    m = manifest_of(DATA)
    store.put_manifest(m)
    (tmp_path / "manifests" / f"{'b' * 64}.json").write_bytes(m.encode())  # wrong id
    (tmp_path / "manifests" / f"{'c' * 64}.json").write_bytes(b"{")
    reopened = ChunkStore(tmp_path, cfg)
    assert [x.manifest_id for x in reopened.manifests()] == [m.manifest_id]


def test_publish_file_helper(store: ChunkStore, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(DATA)
    m = publish_file(store, path, name="m", format="safetensors", version=1, created_unix=10.0)
    assert m == manifest_of(DATA)
    assert store.is_complete(m.manifest_id)


def test_assemble_skips_the_whole_hash_only_of_a_version_a_pull_checked(store: ChunkStore) -> None:
    # A manifest whose whole-file sha256 does not match its chunks: assemble refuses it...
    good = manifest_of(DATA)
    bad = Manifest(**{**good.__dict__, "sha256": "0" * 64})
    pull_into(store, bad, DATA, range(6))
    with pytest.raises(Exception, match="does not match the manifest's sha256"):
        store.assemble(bad.manifest_id)
    # ...unless this process already hashed the whole file (what a pull reports): then the
    # pass over the file is skipped, which is the point.
    store.note_whole_checked(bad.manifest_id)
    assert store.assemble(bad.manifest_id).read_bytes() == DATA


def test_assemble_trusting_recent_writes_still_catches_a_rewritten_chunk(
    store: ChunkStore,
) -> None:
    m = manifest_of(DATA)
    pull_into(store, m, DATA, range(6))
    store.note_whole_checked(m.manifest_id)
    path = store.chunk_path(m.chunk_hashes[4])
    os.unlink(path)  # a new file (new inode), as a rewrite by anything else would make
    path.write_bytes(b"x" * CHUNK)
    with pytest.raises(FailedPrecondition, match="corrupt on disk"):
        store.assemble(m.manifest_id)
    assert store.missing(m.manifest_id) == [4]


def test_staging_syncs_its_chunks_once_at_commit_before_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ChunkStore(tmp_path, ModelsConfig(chunk_size=CHUNK, fsync=True))
    m = manifest_of(DATA)
    synced: list[str] = []
    real_fsync = os.fsync

    def count_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", count_fsync)
    staging = store.staging()
    for i in range(6):
        staging.put(DATA[i * CHUNK : (i + 1) * CHUNK])
    assert not any("/chunks/" in p and ".tmp-" not in p for p in synced)  # none yet
    assert not store.has_manifest(m.manifest_id)
    staging.commit(m)
    chunk_syncs = [p for p in synced if p.rsplit("/", 1)[-1] in m.chunk_hashes]
    assert sorted(chunk_syncs) == sorted(str(store.chunk_path(d)) for d in set(m.chunk_hashes))
    manifest_sync = next(i for i, p in enumerate(synced) if m.manifest_id in p)
    assert all(synced.index(p) < manifest_sync for p in chunk_syncs)  # durable before it counts
    assert store.is_complete(m.manifest_id)


def test_a_pull_killed_while_writing_the_model_file_leaves_nothing_after_restart(
    tmp_path: Path,
) -> None:
    store = ChunkStore(tmp_path, ModelsConfig(chunk_size=CHUNK))
    m = manifest_of(DATA)
    pull_into(store, m, DATA, [0, 1])
    tmp, fd = store.open_assembly(m.manifest_id)
    os.write(fd, DATA[: 2 * CHUNK])  # then SIGKILL: the fd dies with the process
    os.close(fd)
    again = ChunkStore(tmp_path, ModelsConfig(chunk_size=CHUNK))
    assert not tmp.exists()
    assert list((tmp_path / "files").iterdir()) == []
    assert again.missing(m.manifest_id) == [2, 3, 4, 5]  # resumes from the verified chunks


def test_an_adopted_model_file_is_the_assembled_file_and_gc_keeps_it(store: ChunkStore) -> None:
    m = manifest_of(DATA)
    pull_into(store, m, DATA, range(6))
    tmp, fd = store.open_assembly(m.manifest_id)
    os.write(fd, DATA)
    path = store.adopt_assembly(m.manifest_id, tmp, fd)
    assert store.assemble(m.manifest_id) == path and path.read_bytes() == DATA
    assert store.gc().files_removed == 0
    store.delete(m.manifest_id)
    assert not path.exists()
    assert store.gc().chunks_removed == 6


def test_assemble_of_a_checked_version_copies_trusted_chunks_in_the_kernel(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = manifest_of(DATA)
    pull_into(store, m, DATA, range(6))
    store.note_whole_checked(m.manifest_id)
    copies: list[int] = []
    real = os.copy_file_range

    def counting(src: int, dst: int, count: int, *a: object) -> int:
        copies.append(count)
        return real(src, dst, count)

    monkeypatch.setattr(os, "copy_file_range", counting)
    assert store.assemble(m.manifest_id).read_bytes() == DATA
    assert sum(copies) == len(DATA)


def test_assemble_by_copy_gives_way_to_hashing_for_an_untrusted_chunk(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, ModelsConfig(chunk_size=CHUNK, reverify_after_s=0))
    m = manifest_of(DATA)
    pull_into(store, m, DATA, range(6))
    store.note_whole_checked(m.manifest_id)
    store.chunk_path(m.chunk_hashes[2]).write_bytes(b"y" * CHUNK)  # nothing is trusted here
    with pytest.raises(FailedPrecondition, match="corrupt on disk"):
        store.assemble(m.manifest_id)
    assert list((tmp_path / "files").iterdir()) == []

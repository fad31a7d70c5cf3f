"""The model store: one file per version, chunks verified before they count, dedup through
the chunk index, resume, GC, ENOSPC, rot on disk."""

from __future__ import annotations

import errno
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


def piece(data: bytes, i: int) -> bytes:
    return data[i * CHUNK : (i + 1) * CHUNK]


def pull_into(store: ChunkStore, m: Manifest, data: bytes, indices: range | list[int]) -> None:
    store.put_manifest(m)
    for i in indices:
        assert store.write_chunk(m.manifest_id, i, piece(data, i))


def listing(store: ChunkStore) -> list[str]:
    """Every file under the store, relative to it."""
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())


def rot(path: Path, offset: int, keep_mtime: bool = False) -> None:
    """Flips bytes on disk at ``offset``, in place (same inode and size)."""
    st = path.stat()
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(b"rotten")
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_version_is_one_file_partial_with_its_index_then_complete(store: ChunkStore) -> None:
    m = manifest_of(DATA)
    mid = m.manifest_id
    pull_into(store, m, DATA, [0, 3])
    assert listing(store) == [
        f"manifests/{mid}.json", f"versions/{mid}.index", f"versions/{mid}.partial"
    ]  # fmt: skip
    assert (store.versions_dir / f"{mid}.partial").stat().st_size == len(DATA)
    with pytest.raises(FailedPrecondition, match="4 of 6 chunks missing; pull it first"):
        store.assemble(mid)
    pull_into(store, m, DATA, [1, 2, 4, 5])
    assert store.is_complete(mid)
    assert listing(store) == [f"manifests/{mid}.json", f"versions/{mid}.safetensors"]
    path = store.assemble(mid)
    assert path == store.versions_dir / f"{mid}.safetensors"
    assert path.read_bytes() == DATA


def test_write_chunk_verifies_before_anything_counts(store: ChunkStore) -> None:
    m = manifest_of(DATA)
    with pytest.raises(NotFound, match="not known"):
        store.write_chunk(m.manifest_id, 0, piece(DATA, 0))
    store.put_manifest(m)
    assert not store.write_chunk(m.manifest_id, 0, DATA[1 : CHUNK + 1])
    assert not store.write_chunk(m.manifest_id, 99, b"x")
    assert store.present(m.manifest_id) == set()
    assert ChunkStore(store.root, store.config).present(m.manifest_id) == set()


def test_resume_from_the_index_after_a_restart(tmp_path: Path) -> None:
    cfg = ModelsConfig(chunk_size=CHUNK, fsync=False)
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
    assert ChunkStore(tmp_path, cfg).is_complete(m.manifest_id)


def test_chunks_written_but_not_yet_synced_are_fetched_again_after_a_kill(tmp_path: Path) -> None:
    """A killed pull's unsynced chunks are not in the index: the restart does not count them,
    even though their bytes may be in the file (nothing counts before it is durable)."""
    cfg = ModelsConfig(chunk_size=CHUNK, fsync=True)
    store = ChunkStore(tmp_path, cfg)
    m = manifest_of(DATA)
    store.begin_pull(m)
    for i in (0, 1):
        store.write_chunk(m.manifest_id, i, piece(DATA, i), sync=False)
    assert store.sync_chunks(m.manifest_id, [0, 1]) == 2
    store.write_chunk(m.manifest_id, 4, piece(DATA, 4), sync=False)
    assert store.present(m.manifest_id) == {0, 1, 4}
    # The process dies here (no seal): a new one sees what the index names.
    assert ChunkStore(tmp_path, cfg).present(m.manifest_id) == {0, 1}


def test_a_damaged_index_counts_nothing(tmp_path: Path) -> None:
    cfg = ModelsConfig(chunk_size=CHUNK, fsync=False)
    m = manifest_of(DATA)
    pull_into(ChunkStore(tmp_path, cfg), m, DATA, [0, 1])
    (tmp_path / "versions" / f"{m.manifest_id}.index").write_bytes(b"\xff" * 7)
    assert ChunkStore(tmp_path, cfg).present(m.manifest_id) == set()


def test_killed_writers_leave_temporaries_cleared_on_restart(tmp_path: Path) -> None:
    cfg = ModelsConfig(chunk_size=CHUNK, fsync=False)
    store = ChunkStore(tmp_path, cfg)
    m = manifest_of(DATA)
    pull_into(store, m, DATA, [0])
    upload = store.staging()  # an upload cut off by a kill: never committed nor aborted
    upload.put(piece(DATA, 0))
    index_tmp = store.versions_dir / f".tmp-{m.manifest_id}.index.999.0.dead"
    index_tmp.write_bytes(b"\x01")
    assert store.gc().files_removed == 0  # gc never touches temporaries of live writers
    reopened = ChunkStore(tmp_path, cfg)
    assert not upload.path.exists() and not index_tmp.exists()
    assert reopened.present(m.manifest_id) == {0}
    assert reopened.manifests() == [m]


def test_a_version_stopped_between_its_last_index_and_the_rename_completes_at_start(
    tmp_path: Path,
) -> None:
    cfg = ModelsConfig(chunk_size=CHUNK, fsync=False)
    store = ChunkStore(tmp_path, cfg)
    m = manifest_of(DATA)
    pull_into(store, m, DATA, range(6))
    final = store.assemble(m.manifest_id)
    final.rename(final.with_name(f"{m.manifest_id}.partial"))
    store._files[m.manifest_id].save_index(set(range(6)), fsync=False)
    reopened = ChunkStore(tmp_path, cfg)
    assert reopened.is_complete(m.manifest_id)
    assert reopened.assemble(m.manifest_id).read_bytes() == DATA


def test_a_complete_file_of_the_wrong_size_is_set_aside_and_pulled_again(tmp_path: Path) -> None:
    cfg = ModelsConfig(chunk_size=CHUNK, fsync=False)
    m = manifest_of(DATA)
    pull_into(ChunkStore(tmp_path, cfg), m, DATA, range(6))
    final = tmp_path / "versions" / f"{m.manifest_id}.safetensors"
    final.write_bytes(DATA[:100])
    reopened = ChunkStore(tmp_path, cfg)
    assert not reopened.is_complete(m.manifest_id)
    assert reopened.missing(m.manifest_id) == list(range(6))
    assert final.with_name(final.name + ".bad").exists()


def test_a_pull_takes_chunks_another_version_holds_from_the_disk(store: ChunkStore) -> None:
    v2_data = DATA[: CHUNK * 5] + b"new tail"
    v1, v2 = manifest_of(DATA, version=1), manifest_of(v2_data, version=2)
    pull_into(store, v1, DATA, range(6))
    store.begin_pull(v2)
    assert store.present(v2.manifest_id) == {0, 1, 2, 3, 4}  # no fetch for the shared five
    assert store.missing(v2.manifest_id) == [5]
    assert store.write_chunk(v2.manifest_id, 5, b"new tail")
    store.seal(v2.manifest_id)
    assert store.assemble(v2.manifest_id).read_bytes() == v2_data
    assert store.assemble(v1.manifest_id).read_bytes() == DATA


def test_a_rotten_copy_in_another_version_is_not_taken(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, ModelsConfig(chunk_size=CHUNK, fsync=False, reverify_after_s=0))
    v2_data = DATA[: CHUNK * 5] + b"new tail"
    v1, v2 = manifest_of(DATA, version=1), manifest_of(v2_data, version=2)
    pull_into(store, v1, DATA, range(6))
    rot(store.assemble(v1.manifest_id), 2 * CHUNK + 10)
    store.begin_pull(v2)
    assert store.present(v2.manifest_id) == {0, 1, 3, 4}
    assert not store.is_complete(v1.manifest_id)  # and v1 knows it lost chunk 2
    assert store.missing(v1.manifest_id) == [2]


def test_identical_chunks_within_a_version_are_written_at_every_offset_at_once(
    store: ChunkStore,
) -> None:
    data = b"\x00" * (CHUNK * 4)
    m = manifest_of(data)
    pull_into(store, m, data, [0])
    assert store.present(m.manifest_id) == {0, 1, 2, 3}
    assert store.is_complete(m.manifest_id)
    assert store.assemble(m.manifest_id).read_bytes() == data


def test_delete_and_gc(store: ChunkStore) -> None:
    v2_data = DATA[: CHUNK * 5] + b"new tail"
    v1, v2 = manifest_of(DATA, 1), manifest_of(v2_data, 2)
    pull_into(store, v1, DATA, range(6))
    pull_into(store, v2, v2_data, range(6))
    v1_file = store.assemble(v1.manifest_id)
    unpacked = v1_file.with_name(v1_file.name + ".d")
    unpacked.mkdir()
    (unpacked / "config.json").write_text("{}")
    store.delete(v1.manifest_id)
    assert not v1_file.exists() and not unpacked.exists()
    with pytest.raises(NotFound):
        store.delete(v1.manifest_id)
    assert store.assemble(v2.manifest_id).read_bytes() == v2_data
    stray = store.versions_dir / f"{'ab' * 32}.safetensors"  # a file no manifest names
    stray.write_bytes(b"stray")
    (store.versions_dir / f"{'ab' * 32}.safetensors.d").mkdir()
    report = store.gc()
    assert report.files_removed == 2 and report.bytes_freed == len(b"stray")
    assert listing(store) == [f"manifests/{v2.manifest_id}.json",
                              f"versions/{v2.manifest_id}.safetensors"]  # fmt: skip
    assert store.gc().files_removed == 0


def test_the_chunk_index_moves_to_another_holder_when_a_version_goes(store: ChunkStore) -> None:
    v2_data = DATA[: CHUNK * 5] + b"new tail"
    v3_data = DATA[: CHUNK * 5] + b"third"
    v1, v2, v3 = manifest_of(DATA, 1), manifest_of(v2_data, 2), manifest_of(v3_data, 3)
    pull_into(store, v1, DATA, range(6))
    store.begin_pull(v2)  # copies chunks 0-4 from v1
    store.delete(v1.manifest_id)
    store.begin_pull(v3)  # still finds them, in v2
    assert store.present(v3.manifest_id) == {0, 1, 2, 3, 4}


def test_disk_full_is_resource_exhausted_and_counts_nothing(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = manifest_of(DATA)
    store.put_manifest(m)

    def full(*_: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(ResourceExhausted, match=r"disk full .* free space"):
        store.write_chunk(m.manifest_id, 0, piece(DATA, 0))
    monkeypatch.setattr(os, "write", full)
    m2 = manifest_of(DATA, version=2)
    with pytest.raises(ResourceExhausted):
        store.put_manifest(m2)
    monkeypatch.undo()
    assert store.present(m.manifest_id) == set()
    assert not store.has_manifest(m2.manifest_id)
    assert sorted(p.name for p in (store.root / "manifests").iterdir()) == [f"{m.manifest_id}.json"]
    assert store.write_chunk(m.manifest_id, 0, piece(DATA, 0))  # space again: it goes on


def test_other_os_errors_propagate(store: ChunkStore, monkeypatch: pytest.MonkeyPatch) -> None:
    m = manifest_of(DATA)
    store.put_manifest(m)

    def broken(*_: object) -> int:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "pwrite", broken)
    with pytest.raises(OSError, match="I/O error"):
        store.write_chunk(m.manifest_id, 0, piece(DATA, 0))
    monkeypatch.undo()
    assert store.present(m.manifest_id) == set()


def test_read_chunk_serves_and_a_rotten_chunk_makes_the_version_partial(tmp_path: Path) -> None:
    # Hash on every read: the rot below keeps the file's inode and size, and may keep its
    # mtime (coarse clock); test_verified covers the window that skips the hash.
    cfg = ModelsConfig(chunk_size=CHUNK, fsync=False, reverify_after_s=0)
    store = ChunkStore(tmp_path, cfg)
    m = manifest_of(DATA)
    pull_into(store, m, DATA, range(6))
    assert store.read_chunk(m.manifest_id, 5) == DATA[5 * CHUNK :]
    assert [i for i, _ in store.read_chunks(m.manifest_id, [1, 2])] == [1, 2]
    with pytest.raises(InvalidArgument):
        store.read_chunk(m.manifest_id, 6)
    told: list[str] = []
    store.on_incomplete = told.append
    rot(store.assemble(m.manifest_id), 2 * CHUNK)
    with pytest.raises(NotFound, match=r"corrupt on disk.*fetch it elsewhere"):
        store.read_chunk(m.manifest_id, 2)
    assert not store.is_complete(m.manifest_id)
    assert told == [m.manifest_id]  # the driver pulls it again
    assert store.missing(m.manifest_id) == [2]
    with pytest.raises(NotFound, match="not on this node"):
        store.read_chunk(m.manifest_id, 2)
    assert [i for i, _ in store.read_chunks(m.manifest_id, [1, 2, 3])] == [1]  # stops short
    assert ChunkStore(tmp_path, cfg).missing(m.manifest_id) == [2]  # the index says so too
    assert store.write_chunk(m.manifest_id, 2, piece(DATA, 2))  # fetched again
    assert store.is_complete(m.manifest_id)
    assert store.assemble(m.manifest_id).read_bytes() == DATA


def test_read_without_verification(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, ModelsConfig(chunk_size=CHUNK, fsync=False, verify_on_read=False))
    m = manifest_of(DATA)
    pull_into(store, m, DATA, range(6))
    rot(store.assemble(m.manifest_id), 0)
    assert store.read_chunk(m.manifest_id, 0).startswith(b"rotten")


def test_a_partial_version_serves_the_chunks_it_holds(store: ChunkStore) -> None:
    m = manifest_of(DATA)
    store.begin_pull(m)
    store.write_chunk(m.manifest_id, 3, piece(DATA, 3), sync=False)
    assert store.read_chunk(m.manifest_id, 3) == piece(DATA, 3)
    with pytest.raises(NotFound, match="not on this node"):
        store.read_chunk(m.manifest_id, 0)


def test_unreadable_manifest_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "manifests").mkdir(parents=True)
    (tmp_path / "manifests" / f"{'0' * 64}.json").write_text("{not json")
    store = ChunkStore(tmp_path, ModelsConfig(fsync=False))
    assert store.manifests() == []


def test_publish_file_helper(store: ChunkStore, tmp_path: Path) -> None:
    src = tmp_path / "model.safetensors"
    src.write_bytes(DATA)
    m = publish_file(store, src, name="m", format="safetensors", version=1, created_unix=1.0)
    assert store.is_complete(m.manifest_id)
    assert store.assemble(m.manifest_id).read_bytes() == DATA
    assert listing(store) == [f"manifests/{m.manifest_id}.json",
                              f"versions/{m.manifest_id}.safetensors"]  # fmt: skip


def test_an_upload_syncs_its_file_once_before_the_manifest(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.config.fsync = True
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(f"rename {Path(dst).parent.name}/{Path(dst).suffix}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    upload = store.staging()
    for i in range(6):
        upload.put(piece(DATA, i))
    assert events == []  # nothing synced chunk by chunk
    upload.commit(manifest_of(DATA))
    # The upload's file: synced, renamed; then the manifest's own atomic write.
    assert events[:2] == ["fsync", "rename versions/.safetensors"]
    assert "rename manifests/.json" in events[2:]


def test_a_commit_that_does_not_match_the_upload_registers_nothing(store: ChunkStore) -> None:
    upload = store.staging()
    upload.put(piece(DATA, 0))
    with pytest.raises(Exception, match="does not describe"):
        upload.commit(manifest_of(DATA))
    assert upload.abort() == CHUNK
    assert store.manifests() == [] and listing(store) == []

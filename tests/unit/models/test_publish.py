"""Upload assembly: chunks on the fly, manifest only on a complete upload."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
from pathlib import Path
from typing import Any

import pytest

from p2pagent.errors import DataLoss, FailedPrecondition, InvalidArgument, ResourceExhausted
from p2pagent.models.manifest import build_manifest
from p2pagent.models.publish import PublishWriter
from p2pagent.models.store import ChunkStore

from .conftest import CHUNK, blob

DATA = blob(CHUNK * 6 + 77, seed=2)


def writer(store: ChunkStore, **over: Any) -> PublishWriter:
    args: dict[str, Any] = {
        "name": "bert",
        "format": "export",
        "size": len(DATA),
        "version": 7,
        "created_unix": 100.0,
        "metadata": {"inputs": []},
        "replicas": "3",
    }
    args.update(over)
    return PublishWriter(store, **args)


def pieces(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out, pos = [], 0
    while pos < len(data):
        n = rng.choice([1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK])
        out.append(data[pos : pos + n])
        pos += n
    return out


def stored_files(store: ChunkStore) -> list[Path]:
    return [p for p in store.root.rglob("*") if p.is_file()]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_upload_in_odd_pieces_publishes(store: ChunkStore, seed: int) -> None:
    w = writer(store)
    for piece in pieces(DATA, seed):
        w.write(piece)
    assert w.received == len(DATA)
    m = w.finish()
    expected = build_manifest(
        "bert", "export", io.BytesIO(DATA), version=7, created_unix=100.0, chunk_size=CHUNK,
        metadata={"inputs": []}, replicas=3,
    )  # fmt: skip
    assert m == expected
    assert m.replicas == 3
    assert store.get_manifest(m.manifest_id) == m
    assert store.is_complete(m.manifest_id)
    assert store.assemble(m.manifest_id).read_bytes() == DATA
    with pytest.raises(FailedPrecondition):
        w.write(b"more")


def test_chunk_size_default_and_override(store: ChunkStore) -> None:
    w = writer(store, chunk_size=2 * CHUNK)
    w.write(DATA)
    assert w.finish().chunk_size == 2 * CHUNK


def _nothing_published(store: ChunkStore) -> None:
    assert store.manifests() == []
    assert stored_files(store) == []


def test_cut_off_upload_leaves_nothing(store: ChunkStore) -> None:
    w = writer(store)
    w.write(DATA[: CHUNK * 3 + 5])
    # One temporary file holds the upload while it runs; nothing counts yet.
    assert [p.name.startswith(".tmp-upload.") for p in stored_files(store)] == [True]
    assert store.manifests() == []
    w.abort()
    _nothing_published(store)


def test_short_upload_is_refused_at_finish(store: ChunkStore) -> None:
    w = writer(store)
    w.write(DATA[:-1])
    with pytest.raises(InvalidArgument, match=f"ended after {len(DATA) - 1} of the {len(DATA)}"):
        w.finish()
    _nothing_published(store)


def test_oversize_upload_is_refused(store: ChunkStore) -> None:
    w = writer(store)
    w.write(DATA[: CHUNK * 2])
    with pytest.raises(InvalidArgument, match=r"more than the .* declared"):
        w.write(DATA[CHUNK * 2 :] + b"!")
    _nothing_published(store)


def test_exception_inside_context_aborts(store: ChunkStore) -> None:
    with pytest.raises(ConnectionError), writer(store) as w:
        w.write(DATA[: CHUNK * 2])
        raise ConnectionError("client went away")
    _nothing_published(store)


def test_abort_keeps_chunks_other_versions_share(store: ChunkStore) -> None:
    w = writer(store)
    w.write(DATA)
    first = w.finish()
    before = sorted(stored_files(store))
    w2 = writer(store, version=8)
    w2.write(DATA[: CHUNK * 4] + b"different")
    w2.abort()
    assert sorted(stored_files(store)) == before
    assert store.is_complete(first.manifest_id)


def test_header_is_validated_before_any_data(store: ChunkStore) -> None:
    for over, problem in [
        ({"name": "../x"}, "path separator"),
        ({"format": "pickle"}, "unknown model format"),
        ({"size": 0}, "positive"),
        ({"chunk_size": 10}, "out of bounds"),
        ({"replicas": "many"}, "replicas"),
        ({"metadata": {"x": object()}}, "plain JSON"),
    ]:
        with pytest.raises(InvalidArgument, match=problem):
            writer(store, **over)
    _nothing_published(store)


def test_disk_full_mid_upload(store: ChunkStore, monkeypatch: pytest.MonkeyPatch) -> None:
    w = writer(store)
    w.write(DATA[: CHUNK * 2])
    real_pwrite = os.pwrite
    calls = {"n": 0}

    def fills_up(fd: int, data: Any, offset: int) -> int:
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", fills_up)
    with pytest.raises(ResourceExhausted, match="disk full"):
        w.write(DATA[CHUNK * 2 :])
    monkeypatch.undo()
    _nothing_published(store)
    with pytest.raises(FailedPrecondition):
        w.finish()


def test_disk_full_on_manifest_publishes_nothing(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    exact = DATA[: CHUNK * 6]
    w = writer(store, size=len(exact))
    w.write(exact)  # every chunk is on disk; only the manifest is left to write

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(ResourceExhausted):
        w.finish()
    monkeypatch.undo()
    _nothing_published(store)


def test_an_upload_that_does_not_hash_to_its_declared_digest_publishes_nothing(
    store: ChunkStore,
) -> None:
    declared = hashlib.sha256(DATA).hexdigest()
    altered = DATA[: len(DATA) // 2] + bytes(b ^ 1 for b in DATA[len(DATA) // 2 :])
    w = writer(store, sha256=declared)
    w.write(altered)
    with pytest.raises(DataLoss, match="damaged in transit"):
        w.finish()
    _nothing_published(store)


def test_the_declared_digest_and_the_owner_go_into_the_manifest(store: ChunkStore) -> None:
    owner = "spiffe://test/publisher/alice"
    w = writer(store, sha256=hashlib.sha256(DATA).hexdigest().upper(), owner=owner)
    w.write(DATA)
    m = w.finish()
    assert m.sha256 == hashlib.sha256(DATA).hexdigest() and m.owner == owner
    assert store.get_manifest(m.manifest_id).owner == owner


def test_a_digest_that_is_not_sha256_is_refused_before_any_data(store: ChunkStore) -> None:
    with pytest.raises(InvalidArgument, match="not a SHA-256 digest"):
        writer(store, sha256="abc")
    assert store.manifests() == []

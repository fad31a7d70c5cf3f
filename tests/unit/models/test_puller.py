"""The asyncio side of a pull, against in-memory holders: chunks verified and written, the
version sealed (durable) before ``run`` returns, partial holdings advertised and used, a
corrupt holder avoided, and a full disk failing the pull with nothing half-written."""

from __future__ import annotations

import errno
import io
import itertools
import os
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from p2pagent._proto import peer_pb2
from p2pagent.errors import ResourceExhausted
from p2pagent.models.config import ModelsConfig
from p2pagent.models.manifest import build_manifest
from p2pagent.models.puller import Holding, Puller
from p2pagent.models.store import ChunkStore

from .conftest import CHUNK, blob

N = 40
DATA = blob(CHUNK * (N - 1) + 77, seed=9)
MANIFEST = build_manifest(
    "m", "safetensors", io.BytesIO(DATA), version=1, created_unix=0.0, chunk_size=CHUNK
)
CFG = ModelsConfig(chunk_size=CHUNK, fsync=True, stall_timeout_s=5.0, sync_batch_chunks=8)

#: node -> which chunk index it serves and how (None: lacks it).
Serve = Callable[[int], bytes | None]


def honest(i: int) -> bytes | None:
    return DATA[i * CHUNK : (i + 1) * CHUNK]


def corrupt(i: int) -> bytes | None:
    good = honest(i)
    assert good is not None
    return bytes([good[0] ^ 1]) + good[1:]


class FakeCall:
    """A FetchChunks server stream answered from memory, each answer serialized and decoded
    with the caller's deserializer, as gRPC does."""

    def __init__(self, serve: Serve, indices: list[int], decode: Callable[[bytes], Any]) -> None:
        self._serve = serve
        self._indices = indices
        self._decode = decode
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[Any]:
        for i in self._indices:
            data = self._serve(i)
            if data is None or self.cancelled:
                return  # ends short, like a holder lacking the chunk
            yield self._decode(peer_pb2.FetchChunksResponse(index=i, data=data).SerializeToString())

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeChannel:
    """Enough of a grpc.aio channel for ``PeerServiceStub``: only FetchChunks answers."""

    def __init__(self, serve: Serve, asked: list[int]) -> None:
        self._serve = serve
        self._asked = asked

    def unary_stream(
        self, method: str, response_deserializer: Callable[[bytes], Any], **_: Any
    ) -> Callable[..., FakeCall]:
        def call(request: peer_pb2.FetchChunksRequest, **_: Any) -> FakeCall:
            assert method.endswith("/FetchChunks"), method
            self._asked.extend(request.indices)
            return FakeCall(self._serve, list(request.indices), response_deserializer)

        return call

    def unary_unary(self, *_: Any, **__: Any) -> None:
        return None

    stream_unary = stream_stream = unary_unary


class FakePool:
    def __init__(self, holders: dict[str, Serve]) -> None:
        self.asked: dict[str, list[int]] = {a: [] for a in holders}
        self._channels = {a: FakeChannel(s, self.asked[a]) for a, s in holders.items()}

    def get(self, address: str) -> FakeChannel:
        return self._channels[address]


def puller(
    store: ChunkStore,
    pool: FakePool,
    holders: dict[str, Holding],
    advertised: list[frozenset[int]] | None = None,
    name: str = "me",
) -> Puller:
    from concurrent.futures import ThreadPoolExecutor

    return Puller(
        MANIFEST,
        store=store,
        io=ThreadPoolExecutor(2),
        channels=pool,  # type: ignore[arg-type]
        holders=lambda: holders,
        config=CFG,
        rng=random.Random(1),
        advertise=advertised.append if advertised is not None else None,
        name=name,
    )


def files(store: ChunkStore) -> list[str]:
    return sorted(p.name for p in store.versions_dir.iterdir())


async def test_pull_verifies_writes_and_seals_before_returning(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, CFG)
    pool = FakePool({"a1": honest, "a2": corrupt})
    advertised: list[frozenset[int]] = []
    holders = {"n1": Holding("a1"), "bad": Holding("a2")}
    report = await puller(store, pool, holders, advertised).run()
    assert store.is_complete(MANIFEST.manifest_id)  # sealed: durable and complete
    assert files(store) == [f"{MANIFEST.manifest_id}.safetensors"]
    assert store.assemble(MANIFEST.manifest_id).read_bytes() == DATA
    assert report.corrupt >= 1 and "bad" in report.banned
    assert set(report.received_from) == {"n1"}
    assert sum(report.bytes_from.values()) >= len(DATA)
    # Holdings went out as they grew (at most every ADVERTISE_S, so at least once).
    assert advertised and all(a <= b for a, b in itertools.pairwise(advertised))


async def test_partial_holders_serve_what_they_advertise(tmp_path: Path) -> None:
    """A fellow puller holding the first half serves it; the publisher is asked for this
    node's share only, so the half the fellow has never comes from the publisher."""
    store = ChunkStore(tmp_path, CFG)
    half = frozenset(range(N // 2))
    pool = FakePool({"pub": honest, "fellow": lambda i: honest(i) if i in half else None})
    holders = {"pub": Holding("pub"), "fellow": Holding("fellow", half)}
    report = await puller(store, pool, holders).run()
    assert store.is_complete(MANIFEST.manifest_id)
    assert report.received_from.get("fellow", 0) > 0
    assert not set(pool.asked["pub"]) & half


async def test_full_disk_fails_the_pull_keeping_what_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ChunkStore(tmp_path, CFG)
    store.begin_pull(MANIFEST)  # the manifest and the file fit; the chunks will not
    real_pwrite = os.pwrite
    written: list[int] = []

    def full_after_a_few(fd: int, data: Any, offset: int) -> int:
        if len(written) >= 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(offset)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_after_a_few)
    pool = FakePool({"a1": honest})
    with pytest.raises(ResourceExhausted, match="disk full"):
        await puller(store, pool, {"n1": Holding("a1")}).run()
    monkeypatch.undo()
    assert not store.is_complete(MANIFEST.manifest_id)
    assert not [p for p in store.versions_dir.iterdir() if p.name.startswith(".tmp-")]
    # What did land is kept for the retry (it resumes from there), and nothing more.
    have = store.present(MANIFEST.manifest_id)
    assert len(have) <= 5
    assert ChunkStore(tmp_path, CFG).present(MANIFEST.manifest_id) <= have
    await puller(store, pool, {"n1": Holding("a1")}).run()
    assert store.assemble(MANIFEST.manifest_id).read_bytes() == DATA


async def test_a_resumed_pull_fetches_only_what_is_missing(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, CFG)
    store.put_manifest(MANIFEST)
    for i in range(10):
        assert store.write_chunk(MANIFEST.manifest_id, i, honest(i) or b"")
    pool = FakePool({"a1": honest})
    report = await puller(ChunkStore(tmp_path, CFG), pool, {"n1": Holding("a1")}).run()
    assert report.resumed == 10
    assert sorted(pool.asked["a1"]) == list(range(10, N))
    assert ChunkStore(tmp_path, CFG).assemble(MANIFEST.manifest_id).read_bytes() == DATA


async def test_a_failed_pull_leaves_a_partial_file_to_resume(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, ModelsConfig(chunk_size=CHUNK, stall_timeout_s=0.5))
    lacking: Serve = lambda i: honest(i) if i < N // 2 else None  # noqa: E731
    with pytest.raises(Exception, match="no live holder"):
        await puller(store, FakePool({"a1": lacking}), {"n1": Holding("a1")}).run()
    mid = MANIFEST.manifest_id
    assert files(store) == [f"{mid}.index", f"{mid}.partial"]
    landed = store.present(mid)
    assert landed and landed <= set(range(N // 2))
    assert ChunkStore(tmp_path, CFG).present(mid) == landed  # all of it synced and indexed

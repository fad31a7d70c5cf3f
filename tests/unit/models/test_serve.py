"""Serving side: read groups, chunks in the order asked, short streams for missing chunks."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from p2pagent.errors import InvalidArgument, NotFound
from p2pagent.models.chunk_wire import ChunkAnswers, decode_chunk
from p2pagent.models.config import ModelsConfig
from p2pagent.models.manifest import build_manifest
from p2pagent.models.ratelimit import TokenBucket
from p2pagent.models.serve import READ_AHEAD_CHUNKS, ChunkServer, read_groups
from p2pagent.models.store import ChunkStore

from .conftest import CHUNK, blob

N = 40
DATA = blob(CHUNK * (N - 1) + 5, seed=4)
M = build_manifest("m", "safetensors", io.BytesIO(DATA), version=1, created_unix=0.0,
                   chunk_size=CHUNK)  # fmt: skip


def piece(i: int) -> bytes:
    return DATA[i * CHUNK : (i + 1) * CHUNK]


def test_read_groups_keep_order_and_bounds() -> None:
    order = [5, 3, *range(6, N), 0]
    groups = read_groups(M, order)
    assert [i for g in groups for i in g] == order
    assert all(1 <= len(g) <= READ_AHEAD_CHUNKS for g in groups)
    assert len(groups) == -(-len(order) // READ_AHEAD_CHUNKS)  # 4 KiB chunks: count-bound
    with pytest.raises(InvalidArgument, match="out of range"):
        read_groups(M, [0, N])


def copied(_index: int, view: memoryview) -> bytes:
    return bytes(view)


async def collect(server: ChunkServer, store: ChunkStore, indices: list[int]) -> list[int]:
    got = [(i, data) async for i, data in server.serve(store, M.manifest_id, indices, copied)]
    assert all(data == piece(i) for i, data in got)
    return [i for i, _ in got]


async def test_serves_in_order_and_ends_short_at_a_missing_chunk(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, ModelsConfig(chunk_size=CHUNK, fsync=False))
    store.put_manifest(M)
    held = [i for i in range(N) if i != 30]
    for i in held:
        store.write_chunk(M.manifest_id, i, piece(i))
    with ThreadPoolExecutor(2) as pool:
        server = ChunkServer("n1", pool, TokenBucket(0, CHUNK))
        order = list(range(N - 1, -1, -1))
        assert await collect(server, store, order) == order[: order.index(30)]
        assert await collect(server, store, [2, 1]) == [2, 1]
        with pytest.raises(NotFound, match="not on n1"):
            [i async for i, _ in server.serve(store, "ab" * 32, [0], copied)]


async def test_fault_hook_corrupts_every_nth_chunk(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, ModelsConfig(chunk_size=CHUNK, fsync=False))
    store.put_manifest(M)
    for i in range(N):
        store.write_chunk(M.manifest_id, i, piece(i))
    with ThreadPoolExecutor(2) as pool:
        server = ChunkServer("n1", pool, TokenBucket(0, CHUNK), corrupt_every=3)
        chunks = server.serve(store, M.manifest_id, list(range(N)), copied)
        got = {i: d async for i, d in chunks}
    assert {i for i, d in got.items() if not M.verify_chunk(i, d)} == set(range(0, N, 3))


@pytest.mark.parametrize("corrupt_every", [0, 3])
async def test_chunks_read_into_their_answers(tmp_path: Path, corrupt_every: int) -> None:
    """Served through ``ChunkAnswers`` (as the node serves), every answer carries the chunk
    as on disk, the short last one too; the fault hook's altered chunks still go out as
    altered (encoded by copying them)."""
    store = ChunkStore(tmp_path, ModelsConfig(chunk_size=CHUNK, fsync=False))
    store.put_manifest(M)
    for i in range(N):
        store.write_chunk(M.manifest_id, i, piece(i))
    answers = ChunkAnswers()
    with ThreadPoolExecutor(2) as pool:
        server = ChunkServer("n1", pool, TokenBucket(0, CHUNK), corrupt_every=corrupt_every)
        chunks = server.serve(store, M.manifest_id, list(range(N)), answers.encode, answers.buffer)
        got = {i: decode_chunk(answer) async for i, answer in chunks}
    assert sorted(got) == list(range(N))
    assert all(chunk.index == i for i, chunk in got.items())
    bad = {i for i, chunk in got.items() if bytes(chunk.data) != piece(i)}
    assert bad == (set(range(0, N, corrupt_every)) if corrupt_every else set())
    assert all(len(chunk.data) == len(piece(i)) for i, chunk in got.items())

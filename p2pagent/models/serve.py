"""Serving chunks to peers (``Peer.FetchChunks``): read ahead, paced by the upload cap.

Chunks go out in the order asked. They are read from disk in groups (``read_groups``: one
worker-thread hop per few MiB rather than per chunk), the next group while the current one is
sent, so disk and hashing overlap the network. Each chunk first takes its bytes from the
node's upload token bucket, which every stream shares. A chunk this node lacks ends the
stream early: the puller gets the rest elsewhere (``PullPlan.on_missing``).

Test-only fault hook: ``corrupt_every=N`` flips one byte of every chunk whose index is a
multiple of N (set by the driver from ``P2PAGENT_TEST_CORRUPT_CHUNKS``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import TypeVar

from p2pagent.errors import InvalidArgument, NotFound
from p2pagent.models.manifest import Manifest
from p2pagent.models.ratelimit import TokenBucket
from p2pagent.models.registry import check_manifest_id
from p2pagent.models.store import ChunkStore, ReadInto

T = TypeVar("T")

#: Most chunks one FetchChunks call may ask for.
MAX_FETCH_INDICES = 4096
#: Chunks read from disk per worker-thread hop, at most, and bytes (one such group is read
#: ahead while the previous one is sent).
READ_AHEAD_CHUNKS = 16
READ_AHEAD_BYTES = 4 * 1024 * 1024


def read_groups(m: Manifest, indices: list[int]) -> list[list[int]]:
    """``indices`` cut into groups read in one worker-thread hop each: at most
    ``READ_AHEAD_CHUNKS`` chunks and about ``READ_AHEAD_BYTES``. InvalidArgument for an index
    the manifest does not have."""
    groups: list[list[int]] = []
    size = 0
    for index in indices:
        length = m.chunk_length(index)
        if not groups or len(groups[-1]) >= READ_AHEAD_CHUNKS or size >= READ_AHEAD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(index)
        size += length
    return groups


class ChunkServer:
    """One node's serving side: its I/O pool, its upload cap, the fault hook."""

    def __init__(
        self, name: str, io: Executor, bucket: TokenBucket, *, corrupt_every: int = 0
    ) -> None:
        self.name = name
        self._io = io
        self._bucket = bucket
        self._corrupt_every = corrupt_every

    async def serve(
        self,
        store: ChunkStore,
        manifest_id: str,
        indices: list[int],
        encode: Callable[[int, memoryview], T],
        into: ReadInto | None = None,
    ) -> AsyncIterator[tuple[int, T]]:
        """``(index, encode(index, data))`` of the version's chunks, in the order asked, as
        they may go out. ``encode`` runs in the I/O thread that read the chunk, on a view of
        the bytes where they were read (valid only during the call): the answer is built
        there with one copy of the chunk, off the event loop; none where ``into`` gives the
        place to read each chunk into (``ChunkStore.read_chunk_as``). The chunks are read
        one at a time, never two at once."""
        check_manifest_id(manifest_id)
        if len(indices) > MAX_FETCH_INDICES:
            raise InvalidArgument(
                f"FetchChunks asked for {len(indices)} chunks; at most {MAX_FETCH_INDICES} a call"
            )
        if not store.has_manifest(manifest_id):
            raise NotFound(f"model version {manifest_id[:12]} is not on {self.name}")
        m = store.get_manifest(manifest_id)
        groups = read_groups(m, indices)
        loop = asyncio.get_running_loop()
        if self._corrupt_every:
            encode = _corrupting(encode, self._corrupt_every)

        def read(group: list[int]) -> asyncio.Future[list[tuple[int, T]]]:
            return loop.run_in_executor(
                self._io, store.read_chunks_as, manifest_id, group, encode, into
            )

        reading = read(groups[0]) if groups else None
        try:
            for k, group in enumerate(groups):
                assert reading is not None
                chunks = await reading
                reading = read(groups[k + 1]) if k + 1 < len(groups) else None
                for index, answer in chunks:
                    delay = self._bucket.reserve(m.chunk_length(index), time.monotonic())
                    if delay > 0:
                        await asyncio.sleep(delay)
                    yield index, answer
                if len(chunks) < len(group):
                    return  # a chunk this node lacks: ends short, fetched elsewhere
        finally:
            if reading is not None:
                reading.cancel()


def _corrupting(
    encode: Callable[[int, memoryview], T], every: int
) -> Callable[[int, memoryview], T]:
    """The fault hook: ``encode`` of a chunk whose first byte is flipped when its index is a
    multiple of ``every``."""

    def corrupt(index: int, view: memoryview) -> T:
        if index % every == 0:
            view = memoryview(bytes([view[0] ^ 0xFF]) + view[1:])
        return encode(index, view)

    return corrupt

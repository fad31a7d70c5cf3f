"""Chunks of an upload whose manifest does not exist yet (``ChunkStore.staging``).

An upload writes its chunks as they arrive and its manifest last (``publish``), so a cut-off
upload registers nothing; meanwhile its chunks must survive ``gc``, which keeps only what a
manifest or an open staging references. Chunks are written without an fsync each and made
durable together at ``commit``, before the manifest that makes them count.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from p2pagent.errors import FailedPrecondition, Internal
from p2pagent.models.manifest import Manifest

if TYPE_CHECKING:
    from p2pagent.models.store import ChunkStore


class Staging:
    """Chunks of an upload whose manifest does not exist yet.

    While open, its chunks survive ``gc``. ``commit`` registers the manifest and lets go;
    ``abort`` lets go and deletes the chunks that nothing else references.
    """

    def __init__(self, store: ChunkStore) -> None:
        self._store = store
        self._digests: list[str] = []
        self._open = True

    def put(self, data: bytes | memoryview) -> str:
        """Stores a chunk of the upload, not yet durable: ``commit`` syncs them all at once
        (an fsync per chunk as it arrives halved the upload rate). Until then no manifest
        references it, so a power cut leaves at worst a chunk file ``gc`` removes; one that
        was already stored unsynced (by a pull not sealed yet) is synced at commit too."""
        if not self._open:
            raise FailedPrecondition("staging already committed or aborted")
        digest = hashlib.sha256(data).hexdigest()
        # Held before the write, so a concurrent gc cannot remove it in between.
        self._store._stage(digest)
        self._digests.append(digest)
        self._store.put_chunk(data, digest, sync=False)
        return digest

    def commit(self, manifest: Manifest) -> None:
        if not self._open:
            raise FailedPrecondition("staging already committed or aborted")
        missing = set(manifest.chunk_hashes) - set(self._digests)
        if missing:
            raise Internal(f"manifest references {len(missing)} chunks this upload never wrote")
        # Durable before the manifest that makes them count.
        self._store._sync(set(self._digests))
        self._store.put_manifest(manifest)
        self._open = False
        self._store._unstage(self._digests, discard=False)

    def abort(self) -> int:
        """Releases the chunks; returns how many were deleted. Idempotent."""
        if not self._open:
            return 0
        self._open = False
        return self._store._unstage(self._digests, discard=True)

"""Upload assembly: a client-streamed model becomes chunks, then (only on success) a version.

``PublishWriter`` takes the upload header up front (name, format, declared size, chunk size,
metadata, replicas), validates it before any data arrives, then consumes byte pieces of any
size: it cuts them into chunks, hashes each and the whole on the fly, and writes each chunk to
the store as soon as it is complete, so memory stays at one chunk whatever the model size.

Only ``finish`` with exactly the declared size and digest writes the manifest. An upload that
is cut off (the client goes away, ``abort``), overflows the declared size, or fails on a full
disk leaves nothing registered: its temporary file is removed (``staging``), and anything a
crash leaves behind is removed at the next start or ``gc``.

Blocking (store writes): the driver feeds it from a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from p2pagent.errors import DataLoss, FailedPrecondition, InvalidArgument
from p2pagent.inference.formats import FORMAT_HEAD_BYTES, ModelFormat, check_header
from p2pagent.models.manifest import (
    Manifest,
    canonical_metadata,
    check_chunk_size,
    check_model_name,
    check_sha256,
    check_size,
    parse_replicas,
    read_chunks,
)
from p2pagent.models.store import ChunkStore


class PublishWriter:
    """Writes one upload into the store; use as a context manager or call abort() on error."""

    def __init__(
        self,
        store: ChunkStore,
        *,
        name: str,
        format: str | ModelFormat,
        size: int,
        version: int,
        created_unix: float,
        chunk_size: int = 0,
        metadata: Mapping[str, Any] | None = None,
        replicas: str | int | None = 1,
        sha256: str | None = None,
        owner: str = "",
    ) -> None:
        # Validate the whole header before a single byte is stored.
        self._expected = check_sha256(sha256) if sha256 is not None else None
        self._owner = owner
        self._name = check_model_name(name)
        self._format = ModelFormat.parse(format)
        self._chunk_size = check_chunk_size(chunk_size or store.config.chunk_size)
        self._size = check_size(size, self._chunk_size)
        self._metadata = canonical_metadata(metadata)
        self._replicas = parse_replicas(replicas)
        self._version = version
        self._created = created_unix
        self._store = store
        self._staging = store.staging()
        self._buf = bytearray()
        self._received = 0
        self._whole = hashlib.sha256()
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="models-upload-hash")
        self._hashes: list[str] = []
        self._done = False

    @property
    def format(self) -> ModelFormat:
        return self._format

    @property
    def chunk_size(self) -> int:
        return self._chunk_size

    @property
    def received(self) -> int:
        """Bytes consumed so far (for progress reporting)."""
        return self._received

    def write(self, piece: bytes) -> None:
        """Consumes the next piece of the upload."""
        if self._done:
            raise FailedPrecondition("upload already finished or aborted")
        if self._received + len(piece) > self._size:
            self.abort()
            raise InvalidArgument(
                f"upload of {self._name!r} sent more than the {self._size} bytes declared in "
                "its header"
            )
        self._received += len(piece)
        # The whole-upload hash on a core of its own while this thread hashes and writes the
        # chunk (hashlib releases the GIL): the two hashes are an upload's main CPU cost.
        whole = self._hasher.submit(self._whole.update, piece)
        try:
            if not self._buf and len(piece) == self._chunk_size:
                self._put(piece)  # the common case: a piece is a chunk, stored without a copy
                return
            self._buf += piece
            while len(self._buf) >= self._chunk_size:
                self._put(bytes(self._buf[: self._chunk_size]))
                del self._buf[: self._chunk_size]
        except BaseException:
            self.abort()
            raise
        finally:
            whole.result()

    def finish(self) -> Manifest:
        """Completes the upload: checks the size, writes the last chunk and the manifest."""
        if self._done:
            raise FailedPrecondition("upload already finished or aborted")
        if self._received != self._size:
            self.abort()
            raise InvalidArgument(
                f"upload of {self._name!r} ended after {self._received} of the {self._size} "
                "bytes declared; nothing was published"
            )
        self._hasher.shutdown()
        digest = self._whole.hexdigest()
        if self._expected is not None and digest != self._expected:
            self.abort()
            raise DataLoss(
                f"upload of {self._name!r} was damaged in transit: its {self._size} bytes hash "
                f"to {digest[:16]}..., the header declared {self._expected[:16]}...; nothing "
                "was published: push it again"
            )
        try:
            if self._buf:
                self._put(bytes(self._buf))
                self._buf.clear()
            manifest = Manifest(
                name=self._name,
                version=self._version,
                format=self._format,
                size=self._size,
                sha256=digest,
                chunk_size=self._chunk_size,
                chunk_hashes=tuple(self._hashes),
                created_unix=self._created,
                metadata=self._metadata,
                replicas=self._replicas,
                owner=self._owner,
            )
            self._staging.commit(manifest)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return manifest

    def abort(self) -> None:
        """Abandons the upload; nothing is published. Idempotent."""
        self._done = True
        self._buf.clear()
        self._hasher.shutdown(wait=True)
        self._staging.abort()

    def _put(self, chunk: bytes | memoryview) -> None:
        self._hashes.append(self._staging.put(chunk))

    def __enter__(self) -> PublishWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:
            self.abort()


async def receive_upload(
    writer: PublishWriter, pieces: AsyncIterator[bytes], io: Executor
) -> Manifest:
    """Feeds an upload's pieces to ``writer`` in ``io`` threads, one piece hashed and written
    while the next is received, checking the file's first bytes against its format as soon
    as they are in; returns the manifest. Nothing is published on any error (aborted)."""
    loop = asyncio.get_running_loop()
    head = b""
    writing: asyncio.Future[None] | None = None
    try:
        async for piece in pieces:
            if len(head) < FORMAT_HEAD_BYTES:
                head += piece[: FORMAT_HEAD_BYTES - len(head)]
                if len(head) >= FORMAT_HEAD_BYTES:
                    check_header(writer.format, head)
            if writing is not None:
                await writing
            writing = loop.run_in_executor(io, writer.write, piece)
        if writing is not None:
            await writing
        check_header(writer.format, head)
        return await loop.run_in_executor(io, writer.finish)
    except BaseException:
        if writing is not None:  # never abort under a write still running
            await asyncio.gather(writing, return_exceptions=True)
        writer.abort()
        raise


def publish_file(
    store: ChunkStore,
    source: str | os.PathLike[str] | BinaryIO,
    *,
    name: str,
    format: str | ModelFormat,
    version: int,
    created_unix: float,
    chunk_size: int = 0,
    metadata: Mapping[str, Any] | None = None,
    replicas: str | int | None = 1,
) -> Manifest:
    """Publishes a local file (a path or a file opened in binary mode) into the store."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        with path.open("rb") as f:
            return publish_file(
                store, f, name=name, format=format, version=version,
                created_unix=created_unix, chunk_size=chunk_size, metadata=metadata,
                replicas=replicas,
            )  # fmt: skip
    size = os.fstat(source.fileno()).st_size
    with PublishWriter(
        store, name=name, format=format, size=size, version=version,
        created_unix=created_unix, chunk_size=chunk_size, metadata=metadata, replicas=replicas,
    ) as writer:  # fmt: skip
        for piece in read_chunks(source, writer.chunk_size):
            writer.write(piece)
        return writer.finish()

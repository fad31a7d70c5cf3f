"""A file-like view of a stored model version, read chunk by chunk, each chunk verified as
it is read and the whole file at the end: ``ChunkStore.open_reader`` hands it to loaders, so a
version is never copied into one file to be read."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

from p2pagent.errors import Internal
from p2pagent.models.manifest import Manifest


class VerifiedChunkReader(io.RawIOBase):
    """``read_verified(manifest, index)`` returns a chunk's bytes once they match its hash."""

    def __init__(self, manifest: Manifest, read_verified: Callable[[Manifest, int], bytes]) -> None:
        self._m = manifest
        self._read_verified = read_verified
        self._next = 0
        self._buf = memoryview(b"")
        self._whole = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._buf:
            if self._next >= self._m.chunk_count:
                return 0
            data = self._read_verified(self._m, self._next)
            self._whole.update(data)
            self._next += 1
            if self._next == self._m.chunk_count and self._whole.hexdigest() != self._m.sha256:
                raise Internal(
                    f"model {self._m.name!r}: whole file does not match the manifest's sha256"
                )
            self._buf = memoryview(data)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

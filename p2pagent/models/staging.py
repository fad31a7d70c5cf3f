"""An upload's file before its version exists (``ChunkStore.staging``).

An upload (``publish``) arrives in order: its bytes go straight into one temporary file in the
store's ``versions/`` folder, chunk after chunk, with no fsync on the way. Only ``commit`` --
the whole upload arrived and matched its digest -- syncs the file once, gives it the
version's complete name and then writes the manifest that makes it count, so a cut-off upload
registers nothing: ``abort`` removes the file, and a crash leaves a temporary name that the
next start removes (``atomic.remove_stale_temps``) or, past the rename, a file no manifest
names, which ``gc`` removes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from p2pagent.errors import FailedPrecondition, Internal
from p2pagent.models import unbuffered
from p2pagent.models.atomic import DISK_FULL, TEMP_PREFIX, disk_full_error
from p2pagent.models.manifest import Manifest

if TYPE_CHECKING:
    from p2pagent.models.store import ChunkStore


class Staging:
    """The temporary file of one upload; chunks are appended in order."""

    def __init__(self, store: ChunkStore) -> None:
        self._store = store
        unique = f"{os.getpid()}.{secrets.token_hex(8)}"
        self.path: Path = store.versions_dir / f"{TEMP_PREFIX}upload.{unique}"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        #: Written past the page cache while every offset is page-aligned and the file system
        #: lets it (``unbuffered``): a buffered write into fresh page-cache pages cost the
        #: upload as much CPU as one of its two hashes.
        self._direct_fd = -1
        if unbuffered.O_DIRECT and store.config.direct_writes:
            try:
                self._direct_fd = os.open(self.path, os.O_WRONLY | unbuffered.O_DIRECT)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    os.close(self._fd)
                    raise
        self._digests: list[str] = []
        self._size = 0
        self._open = True

    def put(self, data: bytes | memoryview) -> str:
        """Appends the next chunk of the upload; returns its SHA-256."""
        if not self._open:
            raise FailedPrecondition("staging already committed or aborted")
        digest = hashlib.sha256(data).hexdigest()
        view = memoryview(data).cast("B")
        try:
            if not self._write_direct(view):
                while view:
                    n = os.pwrite(self._fd, view, self._size + len(data) - len(view))
                    view = view[n:]
        except OSError as e:
            if e.errno in DISK_FULL:
                raise disk_full_error(self.path, e) from e
            raise
        self._digests.append(digest)
        self._size += len(data)
        return digest

    def _write_direct(self, view: memoryview) -> bool:
        if self._direct_fd < 0 or self._size % unbuffered.ALIGN:
            return False
        if unbuffered.pwrite_direct(self._direct_fd, view, self._size):
            if len(view) % unbuffered.ALIGN:
                os.ftruncate(self._fd, self._size + len(view))  # the padding of a last piece
            return True
        self._close_direct()  # refused at the first write: buffered from now on
        return False

    def _close_direct(self) -> None:
        if self._direct_fd >= 0:
            os.close(self._direct_fd)
            self._direct_fd = -1

    def commit(self, manifest: Manifest) -> None:
        """Makes the file durable and the version ``manifest`` (whose chunks must be exactly
        the ones put, in order)."""
        if not self._open:
            raise FailedPrecondition("staging already committed or aborted")
        if tuple(self._digests) != manifest.chunk_hashes or self._size != manifest.size:
            raise Internal("the manifest does not describe the chunks this upload wrote")
        try:
            if self._store.config.fsync:
                os.fsync(self._fd)
        except OSError as e:
            if e.errno in DISK_FULL:
                raise disk_full_error(self.path, e) from e
            raise
        os.close(self._fd)
        self._close_direct()
        self._open = False
        try:
            self._store._adopt_upload(manifest, self.path)
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise

    def abort(self) -> int:
        """Removes the file; returns the bytes it held. Idempotent."""
        if not self._open:
            return 0
        self._open = False
        os.close(self._fd)
        self._close_direct()
        self.path.unlink(missing_ok=True)
        return self._size

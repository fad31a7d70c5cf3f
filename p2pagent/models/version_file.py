"""One model version's bytes on disk: a single file, chunk ``i`` at ``i * chunk_size``.

Names in the store's ``versions/`` folder:

    <id>.partial        the file while its chunks arrive (a pull, a resumed pull); created at
                        the version's full size, sparse where chunks are still missing
    <id>.index          the chunk index of a partial file: one bit per chunk (``bitmap``), set
                        only for chunks that were verified before they were written and that
                        were made durable (fsync of the file) before the index was written
    <id><suffix>        the complete file, the one the loader reads (``.safetensors``, ...):
                        renamed from ``.partial`` once every chunk is in and durable

So what counts is always what verified: the index never names a chunk that was not checked
against its hash, nor one a power cut could have lost, and the complete name appears only
when every chunk is there. A process killed mid-pull loses at most the chunks written since
the last index (a sync batch); they are fetched again.

Pulled chunks are written past the page cache (``O_DIRECT``, ``unbuffered.pwrite_direct``)
when the chunk size is a multiple of the page size and the file system allows it; otherwise,
and for a short last chunk when direct writing is off, buffered.

Blocking I/O; the store serialises what needs it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from p2pagent.models import unbuffered
from p2pagent.models.atomic import DISK_FULL, atomic_write, disk_full_error, fsync_dir
from p2pagent.models.bitmap import bitmap_length, encode_bitmap
from p2pagent.models.manifest import Manifest

T = TypeVar("T")

PARTIAL = ".partial"
INDEX = ".index"


class VersionFile:
    """Paths and open descriptors of one version's file."""

    def __init__(self, directory: Path, manifest: Manifest) -> None:
        self.m = manifest
        mid = manifest.manifest_id
        self.directory = directory
        self.final = directory / f"{mid}{manifest.format.suffix}"
        self.partial = directory / f"{mid}{PARTIAL}"
        self.index = directory / f"{mid}{INDEX}"
        self._fd = -1
        self._direct_fd = -1
        self._direct_ok = True
        #: Threads writing now (counted by the store under its lock): ``close`` waits for
        #: the last one, so a descriptor is never closed under a write (or reused by another
        #: file the write would then hit).
        self.writers = 0
        self._close_pending = False

    # ---- the chunk index ----------------------------------------------------------------------

    def load_index(self) -> set[int]:
        """Chunks the partial file's index names (none when either is missing or the index is
        damaged: the chunks are then fetched again)."""
        if not self.partial.is_file():
            return set()
        try:
            data = self.index.read_bytes()
        except FileNotFoundError:
            return set()
        count = self.m.chunk_count
        if len(data) != bitmap_length(count):
            return set()
        return {i for i in range(count) if data[i >> 3] >> (i & 7) & 1}

    def save_index(self, chunks: set[int], fsync: bool) -> None:
        atomic_write(self.index, [encode_bitmap(chunks, self.m.chunk_count)], fsync=fsync)

    # ---- writing ----------------------------------------------------------------------------

    def open_partial(self) -> None:
        """Opens (creating at full size) the partial file for writing."""
        if self._fd >= 0:
            return
        fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < self.m.size:
                os.ftruncate(fd, self.m.size)
        except OSError as e:
            os.close(fd)
            if e.errno in DISK_FULL:
                raise disk_full_error(self.partial, e) from e
            raise
        self._fd = fd
        if (
            self._direct_fd == -1
            and unbuffered.O_DIRECT
            and not (self.m.chunk_size % unbuffered.ALIGN)
        ):
            try:
                self._direct_fd = os.open(self.partial, os.O_WRONLY | unbuffered.O_DIRECT)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                # Refused by the file system: buffered writes only.

    def write(self, index: int, data: bytes | memoryview, *, direct: bool) -> None:
        """Writes chunk ``index`` (already verified) at its offset in the partial file, opened
        by ``open_partial`` (several threads may write different chunks at once)."""
        offset = index * self.m.chunk_size
        try:
            if direct and self._write_direct(data, offset):
                return
            view = memoryview(data).cast("B")
            while view:
                n = os.pwrite(self._fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as e:
            if e.errno in DISK_FULL:
                raise disk_full_error(self.partial, e) from e
            raise

    def _write_direct(self, data: bytes | memoryview, offset: int) -> bool:
        if self._direct_fd < 0 or not self._direct_ok:
            return False
        if unbuffered.pwrite_direct(self._direct_fd, data, offset):
            return True
        self._direct_ok = False  # refused at the first write: buffered from now on
        return False

    def sync(self) -> None:
        """Makes what was written durable (the file's data and its size)."""
        if self._fd < 0:
            return
        try:
            os.fsync(self._fd)  # ENOSPC can surface only here (delayed allocation)
        except OSError as e:
            if e.errno in DISK_FULL:
                raise disk_full_error(self.partial, e) from e
            raise

    def finish(self, fsync: bool) -> None:
        """Renames the partial file, every chunk in and verified, to the complete name."""
        self.open_partial()
        os.ftruncate(self._fd, self.m.size)  # a padded direct write of the last chunk
        if fsync:
            self.sync()
        self.close()
        os.replace(self.partial, self.final)
        self.index.unlink(missing_ok=True)
        if fsync:
            fsync_dir(self.directory)

    def reopen(self, fsync: bool) -> None:
        """Turns a complete file back into a partial one (a chunk in it went bad)."""
        os.replace(self.final, self.partial)
        if fsync:
            fsync_dir(self.directory)

    # ---- reading ----------------------------------------------------------------------------

    def read(self, index: int) -> tuple[bytes, os.stat_result]:
        """Chunk ``index`` as it is on disk, and the stat of the file it was read from.
        FileNotFoundError when neither file is there."""
        return self.read_as(index, lambda view, st: (bytes(view), st))

    def read_as(
        self,
        index: int,
        use: Callable[[memoryview, os.stat_result], T],
        into: Callable[[int], memoryview | None] | None = None,
    ) -> T:
        """``use(chunk index's bytes as on disk, the stat of the file they come from)``; the
        view is valid only during the call (``unbuffered.pread_with``: cached bytes from the
        page cache, the rest past it). ``into(length)``: where to read them, if not into the
        thread's buffer. FileNotFoundError when neither file is there."""
        length = self.m.chunk_length(index)
        fd = self._open_for_reading()
        try:
            st = os.fstat(fd)
            buffer = into(length) if into is not None else None
            return unbuffered.pread_with(
                fd, length, index * self.m.chunk_size, lambda view: use(view, st), buffer
            )
        finally:
            os.close(fd)

    def _open_for_reading(self) -> int:
        for path in (self.final, self.partial):
            try:
                return os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
        raise FileNotFoundError(self.final)

    def end_write(self) -> None:
        self.writers -= 1
        if not self.writers and self._close_pending:
            self.close()

    def close(self) -> None:
        if self.writers:
            self._close_pending = True
            return
        self._close_pending = False
        for fd in (self._fd, self._direct_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._direct_fd = -1

    def remove(self) -> None:
        self.close()
        for path in (self.final, self.partial, self.index):
            path.unlink(missing_ok=True)

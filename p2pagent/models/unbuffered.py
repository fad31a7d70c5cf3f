"""Writing chunks past the page cache (``O_DIRECT``), where the file system allows it.

Why: a pulled chunk is written once and not read back soon, yet a buffered write copies it
into freshly allocated page-cache pages. In profiles of a pull (``perf`` on the puller) that
copy (``copy_folio_from_iter_atomic``) was 38% of the puller's CPU, more than TLS, protobuf
and SHA-256 together: on a virtual machine whose host hands out guest pages lazily, first
touch of each new page is expensive, and a pull touches as many new pages as it writes bytes.
With ``O_DIRECT`` the device reads the data straight from a user buffer, and that buffer is
the same few pages for every chunk a thread writes.

``O_DIRECT`` wants the buffer address, the file offset and the length aligned to the device's
logical block size. Each writing thread therefore keeps one page-aligned buffer (an anonymous
``mmap``, grown to the largest chunk seen and then reused, so its pages stay resident),
copies the chunk into it, writes whole blocks, and cuts the padding of a last partial block
off with ``ftruncate``. File systems without ``O_DIRECT`` (tmpfs on older kernels, some
overlays) refuse it with EINVAL at open or at the first write: the file is then written
buffered, as before.

Durability is unchanged: ``O_DIRECT`` neither flushes the device's cache nor commits the
file's size and blocks, so the store still fsyncs each file (now with no dirty pages to write
back) before a version counts as complete.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

#: Alignment of buffer, offset and length: a page, a multiple of any logical block size the
#: kernel accepts for O_DIRECT on the file systems we run on (512 or 4096 bytes).
ALIGN = mmap.PAGESIZE
#: ``os.O_DIRECT`` where the platform has it (Linux); 0 elsewhere (writes stay buffered).
O_DIRECT: int = getattr(os, "O_DIRECT", 0)

T = TypeVar("T")

_local = threading.local()


def aligned_buffer(size: int) -> mmap.mmap:
    """This thread's page-aligned buffer of at least ``size`` bytes (kept for the next call)."""
    buf: mmap.mmap | None = getattr(_local, "buffer", None)
    if buf is None or len(buf) < size:
        if buf is not None:
            buf.close()
        buf = mmap.mmap(-1, _round_up(max(size, ALIGN)))
        _local.buffer = buf
    return buf


def _round_up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def write_direct(fd: int, pieces: Iterable[bytes | memoryview]) -> int:
    """Writes ``pieces`` to ``fd`` (opened with ``O_DIRECT``, at offset 0); returns the bytes
    written. Falls back to a buffered write where the file system refuses ``O_DIRECT``.

    The pieces are gathered in this thread's aligned buffer, so together they must fit in
    memory (a chunk: at most ``config.MAX_CHUNK_SIZE``).
    """
    parts = [memoryview(p).cast("B") for p in pieces]
    size = sum(len(p) for p in parts)
    padded = _round_up(size)
    view = memoryview(aligned_buffer(padded))
    try:
        pos = 0
        for part in parts:
            view[pos : pos + len(part)] = part
            pos += len(part)
        try:
            _write_all(fd, view[:padded])
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            _write_buffered(fd, view[:size])  # the file system said no to O_DIRECT
            return size
        if padded != size:
            os.ftruncate(fd, size)
    finally:
        view.release()
    return size


def _write_buffered(fd: int, data: memoryview) -> None:
    import fcntl  # Linux-only path; imported here so the module loads everywhere

    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~O_DIRECT)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    _write_all(fd, data)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        n = os.write(fd, view)
        view = view[n:]


def pwrite_direct(fd: int, data: bytes | memoryview, offset: int) -> bool:
    """Writes ``data`` at ``offset`` of ``fd`` (opened with ``O_DIRECT``) through this thread's
    aligned buffer; False, writing nothing, where the file system refuses ``O_DIRECT`` (the
    caller then writes buffered). ``offset`` must be a multiple of ``ALIGN``; a length that is
    not is padded with zeros past the end of ``data``, so the caller truncates the file to its
    real size afterwards (only the last chunk of a version has such a length)."""
    part = memoryview(data).cast("B")
    size = len(part)
    padded = _round_up(size)
    view = memoryview(aligned_buffer(padded))
    try:
        view[:size] = part
        if padded != size:
            view[size:padded] = bytes(padded - size)
        pos = 0
        while pos < padded:
            try:
                n = os.pwrite(fd, view[pos:padded], offset + pos)
            except OSError as e:
                if e.errno != errno.EINVAL or pos:
                    raise
                return False  # the file system said no to O_DIRECT
            pos += n
    finally:
        view.release()
    return True


def pread_with(
    fd: int,
    length: int,
    offset: int,
    use: Callable[[memoryview], T],
    into: memoryview | None = None,
) -> T:
    """Reads ``length`` bytes at ``offset`` of ``fd`` (shorter at the end of the file) into
    this thread's aligned buffer and returns ``use(view of them)``; the view is valid only
    during the call (the buffer is this thread's next read's or write's). ``into``: the
    caller's own aligned buffer to read into instead (with room for the padding of a last
    block), which stays the caller's (``chunk_wire.ChunkAnswers``: the answer itself).

    Why: a holder serves chunks it wrote past the page cache (``O_DIRECT``), so a buffered
    read of them fills the page cache first, and on this kind of virtual machine that is the
    costly part (measured: 1.77 CPU s/GiB reading a file not in the cache, 0.06 from the
    cache, 0.15 with ``O_DIRECT`` into this buffer and one copy out of it, about what a
    cached read and the same copy cost). So chunks are read past the page cache, through a
    second descriptor of the same file opened with ``O_DIRECT`` (through ``/proc/self/fd``, so
    a rename between the two opens cannot swap the file); buffered where the file system
    refuses ``O_DIRECT`` or ``offset`` is not aligned. (A read with ``RWF_NOWAIT`` cannot
    tell cached bytes first: where they are not cached it starts the readahead that fills
    the cache before it answers EAGAIN.)
    """
    own = into is None or len(into) < _round_up(length)
    view = memoryview(aligned_buffer(_round_up(length))) if own or into is None else into
    try:
        got = 0
        if O_DIRECT and not offset % ALIGN:
            got = _read_direct(fd, view, offset, length)
        while got < length:
            n = os.preadv(fd, [view[got:length]], offset + got)
            if not n:
                break  # the end of the file
            got += n
        with view[:got] as part:  # released after use, even if ``use`` kept it
            return use(part)
    finally:
        if own:
            view.release()


def _read_direct(fd: int, view: memoryview, offset: int, length: int) -> int:
    """Reads up to ``length`` bytes (whole aligned blocks: the buffer has room for the
    padding) with ``O_DIRECT``; returns how many it got (0 where the file system refuses
    ``O_DIRECT``: the caller reads buffered)."""
    got = 0
    try:
        direct = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | O_DIRECT)
    except OSError:
        return 0  # no /proc, or O_DIRECT refused at open: read buffered
    try:
        padded = _round_up(length)
        while got < length:
            try:
                n = os.preadv(direct, [view[got:padded]], offset + got)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                return 0  # refused at the first read: buffered
            if not n:
                break
            got += n
            if got % ALIGN:
                break  # the end of the file came first (a short last block)
        return min(got, length)
    finally:
        os.close(direct)

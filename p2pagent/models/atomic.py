"""Atomic file writes: a file is either absent or complete, never half-written.

The recipe: write a temporary file in the target's directory (so the rename cannot cross file
systems), fsync it, rename it over the target, fsync the directory (so the rename itself
survives a power cut). Any failure removes the temporary file. A process killed mid-write
leaves only a ``.tmp-`` file, which readers never look at and ``remove_stale_temps`` clears
on the next start.

A full disk (ENOSPC, or EDQUOT for quotas) becomes ResourceExhausted with a message saying
what to do; other OS errors propagate as they are. Blocking: call from a worker thread.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from p2pagent.errors import ResourceExhausted
from p2pagent.models import unbuffered

TEMP_PREFIX = ".tmp-"
#: errno values meaning the disk (or the quota) is full.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_counter = itertools.count()


def is_temp(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


def disk_full_error(path: Path, e: OSError) -> ResourceExhausted:
    return ResourceExhausted(
        f"disk full writing {path.parent} ({e.strerror}): free space there or delete old model "
        "versions (p2pagentctl models rm NAME --version ID)"
    )


def atomic_write(
    path: Path,
    pieces: Iterable[bytes | memoryview],
    *,
    fsync: bool = True,
    before_commit: Callable[[], None] | None = None,
    direct: bool = False,
) -> int:
    """Writes ``pieces`` to ``path`` atomically; returns the bytes written.

    ``before_commit`` runs after the data is written and before the rename; raising there
    (for example on a hash mismatch) abandons the write and leaves ``path`` untouched.
    ``direct`` writes past the page cache (``unbuffered``; the pieces are gathered in memory
    first, so only for chunk-sized files), falling back to buffered where unsupported.
    """
    unique = f"{os.getpid()}.{next(_counter)}.{secrets.token_hex(4)}"
    tmp = path.parent / f"{TEMP_PREFIX}{path.name}.{unique}"
    fd = -1
    try:
        fd = _open_new(tmp, direct)
        written = 0
        if direct:
            written = unbuffered.write_direct(fd, pieces)
        else:
            for piece in pieces:
                view = memoryview(piece)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                    written += n
        if fsync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        if before_commit is not None:
            before_commit()
        os.replace(tmp, path)
    except BaseException as e:
        # Whatever went wrong (a full disk, a hash mismatch, a cancelled thread), the target is
        # untouched and the temporary file must not linger.
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            raise disk_full_error(path, e) from e
        raise
    if fsync:
        fsync_dir(path.parent)
    return written


def _open_new(path: Path, direct: bool) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    if direct and unbuffered.O_DIRECT:
        try:
            return os.open(path, flags | unbuffered.O_DIRECT, 0o644)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            # The file system refuses O_DIRECT (tmpfs on older kernels): write buffered.
    return os.open(path, flags, 0o644)


def fsync_dir(directory: Path) -> None:
    """Makes renames and unlinks in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(root: Path) -> int:
    """Deletes ``.tmp-`` files and folders under ``root`` left by a crash; returns how many.

    Only safe when no writer is active under ``root`` (the store calls it once, on open).
    """
    removed = 0
    for dirpath, dirs, files in os.walk(root):
        for name in [d for d in dirs if is_temp(d)]:  # a folder being unpacked (hf.pack)
            shutil.rmtree(os.path.join(dirpath, name), ignore_errors=True)
            dirs.remove(name)
            removed += 1
        for name in files:
            if is_temp(name):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed

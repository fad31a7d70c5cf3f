"""Chunks read for serving (``unbuffered.pread_with``): exactly the file's bytes whether they
are in the page cache or not, cached bytes from the cache, the rest past it (so serving a
chunk written with O_DIRECT does not fill the page cache), and a buffered read where the file
system refuses O_DIRECT."""

from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from p2pagent.models import unbuffered

from .conftest import blob

A = unbuffered.ALIGN
SIZE = 8 * A + 123  # the last block is short
DATA = blob(SIZE, seed=11)


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "version"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def _drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _read(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return unbuffered.pread_with(fd, length, offset, bytes)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, A), (2 * A, 3 * A), (7 * A, A), (8 * A, 123), (8 * A, A), (5, A), (A, 0), (SIZE, A)],
)
@pytest.mark.parametrize("cached", [True, False])
def test_reads_exactly_the_file_s_bytes(
    tmp_path: Path, offset: int, length: int, cached: bool
) -> None:
    path = _file(tmp_path)
    if cached:
        path.read_bytes()
    else:
        _drop_cache(path)
    assert _read(path, offset, length) == DATA[offset : offset + length]


@pytest.mark.skipif(not unbuffered.O_DIRECT, reason="no O_DIRECT on this platform")
@pytest.mark.parametrize(("offset", "direct"), [(2 * A, True), (5, False)])
def test_aligned_reads_go_past_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offset: int, direct: bool
) -> None:
    """A chunk at an aligned offset is read with O_DIRECT (serving a chunk written with
    O_DIRECT does not fill the page cache); an unaligned one is read buffered."""
    path = _file(tmp_path)
    real_open = os.open
    direct_opens: list[str] = []

    def recording(p: Any, flags: int, mode: int = 0o777) -> int:
        if flags & unbuffered.O_DIRECT:
            direct_opens.append(str(p))
        return real_open(p, flags, mode)

    monkeypatch.setattr(os, "open", recording)
    assert _read(path, offset, 3 * A) == DATA[offset : offset + 3 * A]
    assert len(direct_opens) == direct
    if direct:
        assert direct_opens[0].startswith("/proc/self/fd/")  # the same file, not its name


def test_refused_o_direct_reads_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _file(tmp_path)
    _drop_cache(path)
    real_open, real_preadv = os.open, os.preadv
    fds: list[int] = []

    def no_direct_open(p: Any, flags: int, mode: int = 0o777) -> int:
        fd = real_open(p, flags & ~unbuffered.O_DIRECT, mode)
        if unbuffered.O_DIRECT and flags & unbuffered.O_DIRECT:
            fds.append(fd)
        return fd

    def einval_direct(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        if fd in fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "open", no_direct_open)
    monkeypatch.setattr(os, "preadv", einval_direct)
    assert _read(path, 0, SIZE) == DATA


def test_the_view_is_released_after_use(tmp_path: Path) -> None:
    path = _file(tmp_path)

    def check() -> None:  # a thread of its own: its own buffer
        kept: list[memoryview] = []
        assert _read(path, 0, A) == DATA[:A]
        fd = os.open(path, os.O_RDONLY)
        try:
            unbuffered.pread_with(fd, A, 0, kept.append)
        finally:
            os.close(fd)
        with pytest.raises(ValueError):
            kept[0].tobytes()  # released: the buffer can be reused or grown
        unbuffered.aligned_buffer(100 * A)  # grows (closes the old one) without BufferError

    with ThreadPoolExecutor(1) as pool:
        pool.submit(check).result()

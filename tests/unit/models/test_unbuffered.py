"""Chunk files written past the page cache (``unbuffered``, ``atomic_write(direct=True)``):
the file holds exactly the bytes given whatever their length, and a file system refusing
O_DIRECT (at open or at the first write) gets a buffered write instead."""

from __future__ import annotations

import ctypes
import errno
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from p2pagent.models import unbuffered
from p2pagent.models.atomic import atomic_write
from p2pagent.models.config import ModelsConfig
from p2pagent.models.store import ChunkStore

from .conftest import blob
from .test_store import manifest_of

A = unbuffered.ALIGN


@pytest.mark.parametrize("size", [0, 1, A - 1, A, A + 1, 3 * A + 5, (1 << 20) + 3])
def test_direct_write_holds_exactly_the_bytes(tmp_path: Path, size: int) -> None:
    data = blob(size, seed=size)
    cut = size // 3
    pieces: list[bytes | memoryview] = [data[:cut], memoryview(data)[cut:]]  # both kinds
    path = tmp_path / "chunk"
    assert atomic_write(path, pieces, direct=True) == size
    assert path.read_bytes() == data  # no block padding left behind


def test_the_buffer_is_page_aligned_and_kept_for_the_next_chunk() -> None:
    def check() -> None:  # in a thread of its own: a fresh buffer
        first = unbuffered.aligned_buffer(10)
        assert len(first) == A
        assert ctypes.addressof(ctypes.c_char.from_buffer(first)) % A == 0
        assert unbuffered.aligned_buffer(A) is first  # reused: its pages stay resident
        bigger = unbuffered.aligned_buffer(5 * A + 1)
        assert len(bigger) == 6 * A
        assert ctypes.addressof(ctypes.c_char.from_buffer(bigger)) % A == 0

    with ThreadPoolExecutor(1) as pool:
        pool.submit(check).result()


def test_refused_at_open_falls_back_to_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open
    flags_seen: list[int] = []

    def no_direct(path: Any, flags: int, mode: int = 0o777) -> int:
        flags_seen.append(flags)
        if unbuffered.O_DIRECT and flags & unbuffered.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT not supported")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", no_direct)
    data = blob(A + 7, seed=1)
    atomic_write(tmp_path / "chunk", [data], direct=True)
    assert (tmp_path / "chunk").read_bytes() == data
    assert not flags_seen[-1] & unbuffered.O_DIRECT


def test_refused_at_write_falls_back_to_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = unbuffered._write_all
    calls: list[int] = []

    def refuse_first(fd: int, view: memoryview) -> None:
        calls.append(len(view))
        if len(calls) == 1:
            os.write(fd, view[:A])  # part of it landed before the refusal
            raise OSError(errno.EINVAL, "Invalid argument")
        real_write(fd, view)

    monkeypatch.setattr(unbuffered, "_write_all", refuse_first)
    data = blob(3 * A + 11, seed=2)
    atomic_write(tmp_path / "chunk", [data], direct=True)
    assert (tmp_path / "chunk").read_bytes() == data
    assert calls == [4 * A, len(data)]  # padded direct attempt, then the bytes alone


def test_other_write_errors_are_not_swallowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def io_error(fd: int, view: memoryview) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(unbuffered, "_write_all", io_error)
    with pytest.raises(OSError, match="I/O error"):
        atomic_write(tmp_path / "chunk", [b"data"], direct=True)
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone too


def test_pulled_chunks_written_direct_read_back_verified(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, ModelsConfig(chunk_size=4096, direct_writes=True))
    data = blob(4096 * 3 + 100, seed=3)
    m = manifest_of(data)
    store.begin_pull(m)
    for i in range(m.chunk_count):
        piece = memoryview(data)[i * 4096 : (i + 1) * 4096]
        assert store.write_chunk(m.manifest_id, i, piece, sync=False, direct=True)
    store.seal(m.manifest_id)
    assert store.is_complete(m.manifest_id)
    assert b"".join(store.read_chunk(m.manifest_id, i) for i in range(m.chunk_count)) == data

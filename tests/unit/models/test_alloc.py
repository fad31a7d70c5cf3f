"""Allocator thresholds for chunk buffers."""

from __future__ import annotations

import sys

import pytest

from p2pagent.models.alloc import MAX_MMAP_THRESHOLD, keep_chunk_buffers_on_heap, thresholds

MIB = 1024 * 1024


def test_thresholds_cover_a_few_chunks_within_glibc_limits() -> None:
    assert thresholds(MIB) == (4 * MIB, 32 * MIB)
    assert thresholds(4 * 1024) == (4 * MIB, 32 * MIB)
    mmap_threshold, trim = thresholds(16 * MIB)
    assert mmap_threshold == MAX_MMAP_THRESHOLD and trim == 8 * MAX_MMAP_THRESHOLD


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_applies_on_glibc() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert keep_chunk_buffers_on_heap(MIB)


def test_chunk_buffers_are_refitted_only_for_a_larger_chunk_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from p2pagent.models import alloc

    applied: list[int] = []
    monkeypatch.setattr(alloc, "keep_chunk_buffers_on_heap", lambda size: applied.append(size))
    buffers = alloc.ChunkBuffers(enabled=True)
    for size in [MIB, MIB, 4 * MIB, 2 * MIB, 4 * MIB, 16 * MIB]:
        buffers.fit(size)
    assert applied == [MIB, 4 * MIB, 16 * MIB]
    off = alloc.ChunkBuffers(enabled=False)  # models.tune_malloc = false
    off.fit(8 * MIB)
    assert applied == [MIB, 4 * MIB, 16 * MIB]

"""Allocator settings for the chunk data path (glibc only; a no-op elsewhere).

Every chunk served or pulled passes through several MiB-sized buffers (file read, protobuf
message, wire encoding). glibc serves an allocation that large from a fresh ``mmap`` and
returns it with ``munmap`` when freed, so each chunk costs hundreds of page faults and page
zeroings on each side: a third of the serving CPU in profiles (``perf``: page faults,
``clear_page``, ``unmap_page_range``). Raising the mmap threshold above the chunk size keeps
those buffers on the heap, where freed ones are reused, and a trim threshold a few times
larger keeps the heap from being handed back to the kernel between chunks. Memory cost: at
most ``trim_threshold`` of free heap kept per malloc arena.

The settings are process-wide. The chunk size is chosen per upload (up to 16 MiB), not per
node, so the node raises them for each larger chunk size it meets (``ChunkBuffers``): tuned
only for its own default of 1 MiB, serving a model cut in 4 MiB chunks cost 3.7 instead of 1.3
CPU s/GiB (``models.tune_malloc`` turns all of this off).
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

#: ``mallopt`` parameters (glibc <malloc.h>).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's ceiling for the mmap threshold on 64-bit systems.
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024


def thresholds(chunk_size: int) -> tuple[int, int]:
    """(mmap threshold, trim threshold) for chunks of ``chunk_size`` bytes: buffers of a few
    chunks stay on the heap, and about eight of them may be kept free."""
    mmap_threshold = min(MAX_MMAP_THRESHOLD, max(4 * 1024 * 1024, 4 * chunk_size))
    return mmap_threshold, 8 * mmap_threshold


def keep_chunk_buffers_on_heap(chunk_size: int) -> bool:
    """Applies ``thresholds(chunk_size)`` with glibc's ``mallopt``; False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, ...): its allocator has no such knobs
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_threshold, trim_threshold = thresholds(chunk_size)
    ok: bool = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
    ok = mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1 and ok
    if not ok:
        log.debug("models: mallopt refused the chunk buffer thresholds")
    return ok


class ChunkBuffers:
    """The thresholds fitted to the largest chunk size seen so far (raised, never lowered:
    smaller buffers stay on the heap anyway)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        #: The chunk size the thresholds were last fitted to (0: not yet).
        self.fitted_to = 0

    def fit(self, chunk_size: int) -> None:
        if self.enabled and chunk_size > self.fitted_to:
            self.fitted_to = chunk_size
            keep_chunk_buffers_on_heap(chunk_size)

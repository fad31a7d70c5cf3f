"""glibc malloc settings for a long-running daemon that must give memory back.

A node receives large messages it then refuses (an 8 MB Peer payload over its method's bound)
and large ones it accepts (model chunks, tensors). With glibc's defaults each gRPC thread gets
its own arena and the mmap threshold climbs after the first large free, so later large
buffers come from the heap and stay in RSS after they are freed: a hostile peer's few dozen
8 MB messages left a node about 100 MB larger for good (``bench/attack_memory.py``). Fixing
the mmap threshold makes every large buffer its own mapping, returned on free; two arenas and
a low trim threshold keep the small-object heaps from holding freed pages.

These are the start-up values. A node that moves models later raises both thresholds to fit
its chunk buffers (``models/alloc.py``: MiB-sized buffers reused on the heap save a third of
the CPU per served byte); buffers larger than that, such as a refused 8 MB message, are
still mapped and unmapped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: Allocations at least this large are mmapped (and unmapped on free).
MMAP_THRESHOLD_BYTES = 128 * 1024
#: Free memory above this at the top of a heap is returned to the system.
TRIM_THRESHOLD_BYTES = 128 * 1024
#: Arenas shared by all threads (glibc's default is 8 per core; with 2, 8 MB refusals still
#: left 33-53 MB behind, with 1 they left 26 MB).
ARENA_MAX = 1


def tune() -> bool:
    """Applies the settings above; False (and nothing changed) where libc is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
            (_M_ARENA_MAX, ARENA_MAX),
        )
    )
    if not ok:
        log.debug("mallopt refused a setting; glibc defaults stay in force")
    return ok

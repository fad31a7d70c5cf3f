"""The delta buffer: recent operation deltas by origin counter, to answer digests cheaply.

Deltas are kept encoded (``codec.encode_delta``): a few dozen bytes each instead of a few
kilobytes of Python objects, and their size is exact.

When a peer's digest shows it lacks counters ``a..b`` of some origin and every one of them is
covered by a buffered operation, we send those deltas (small); otherwise the replica falls back
to slices of its state. The buffer holds our own operations and those received from others (so
any replica can help a lagging one), bounded by count and bytes, oldest evicted first; entries
every live member has acknowledged are dropped early by :meth:`drop_acknowledged`.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Mapping

from p2pagent.state.clocks import Range
from p2pagent.state.messages import OpId


class DeltaBuffer:
    __slots__ = ("_by_origin", "_bytes", "_count", "_fifo", "_firsts", "max_bytes", "max_ops")

    def __init__(self, max_ops: int, max_bytes: int) -> None:
        self.max_ops = max_ops
        self.max_bytes = max_bytes
        #: origin -> first counter -> (last counter, encoded delta)
        self._by_origin: dict[str, dict[int, tuple[int, bytes]]] = {}
        #: origin -> sorted first counters (for coverage lookups)
        self._firsts: dict[str, list[int]] = {}
        self._fifo: deque[tuple[str, int]] = deque()
        self._bytes = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def add(self, op: OpId, data: bytes) -> None:
        entries = self._by_origin.setdefault(op.origin, {})
        if op.first in entries:
            return
        entries[op.first] = (op.last, data)
        firsts = self._firsts.setdefault(op.origin, [])
        if not firsts or firsts[-1] < op.first:
            firsts.append(op.first)
        else:
            bisect.insort(firsts, op.first)
        self._fifo.append((op.origin, op.first))
        self._bytes += len(data)
        self._count += 1
        while self._fifo and (self._count > self.max_ops or self._bytes > self.max_bytes):
            origin, first = self._fifo.popleft()
            self._remove(origin, first)

    def _remove(self, origin: str, first: int) -> None:
        entries = self._by_origin.get(origin)
        if entries is None or first not in entries:
            return  # already dropped as acknowledged
        self._bytes -= len(entries.pop(first)[1])
        self._count -= 1
        firsts = self._firsts[origin]
        i = bisect.bisect_left(firsts, first)
        del firsts[i]
        if not entries:
            del self._by_origin[origin]
            del self._firsts[origin]

    def cover(self, origin: str, gap: list[Range]) -> list[bytes] | None:
        """The buffered deltas that together contain every counter of ``gap``, or None."""
        entries = self._by_origin.get(origin)
        if entries is None:
            return None
        firsts = self._firsts[origin]
        out: list[bytes] = []
        used: set[int] = set()
        for lo, hi in gap:
            cur = lo
            while cur <= hi:
                i = bisect.bisect_right(firsts, cur) - 1
                if i < 0:
                    return None
                last, data = entries[firsts[i]]
                if last < cur:
                    return None
                if firsts[i] not in used:
                    used.add(firsts[i])
                    out.append(data)
                cur = last + 1
        return out

    def drop_acknowledged(self, acked: Mapping[str, int]) -> None:
        """Drops operations whose last counter every live member has seen (``acked``)."""
        for origin, upto in acked.items():
            firsts = self._firsts.get(origin)
            while firsts:
                first = firsts[0]
                if self._by_origin[origin][first][0] > upto:
                    break
                self._remove(origin, first)
                firsts = self._firsts.get(origin)
        # Drop the FIFO slots of removed entries from the front (acknowledged ops are mostly
        # the oldest); any left in the middle are skipped by _remove when they come up.
        while self._fifo:
            origin, first = self._fifo[0]
            if first in self._by_origin.get(origin, {}):
                break
            self._fifo.popleft()

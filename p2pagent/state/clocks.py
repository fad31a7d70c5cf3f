"""Logical clocks for the replicated state: version vectors, the dot context, and the HLC.

- A *dot* ``(origin, counter)`` names one write event. Every local operation of a replica
  draws fresh dots from its own origin's counter, so dots are unique cluster-wide.
- A *version vector* (``dict[str, int]``) summarises a set of dots by the largest counter per
  origin. We use it where users see versions (``Get`` responses, the MV write context).
- A :class:`DotContext` is the exact set of dots a replica has *seen* (the causal context of a
  dotted version vector): per origin a contiguous prefix ``1..base`` plus a sparse "cloud" of
  later ranges, for deltas that arrived out of order. Seen-but-not-live dots are what makes a
  removal stick without a tombstone: a dot in the context that is not live is dead forever.
- :class:`HybridClock` is a hybrid logical clock for last-writer-wins timestamps. It never
  reads the time itself: ``now`` is passed in.

Ranges are closed intervals ``(lo, hi)`` kept sorted, disjoint and non-adjacent.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping
from enum import Enum

Dot = tuple[str, int]
Range = tuple[int, int]
VersionVector = dict[str, int]

#: Largest counter or timestamp we accept (fits a signed 64-bit integer on every wire).
MAX_COUNTER = (1 << 63) - 1


# ---- version vectors ----------------------------------------------------------------------


class Ordering(Enum):
    EQUAL = "equal"
    BEFORE = "before"  # a happened before b
    AFTER = "after"
    CONCURRENT = "concurrent"


def vv_merge(a: Mapping[str, int], b: Mapping[str, int]) -> VersionVector:
    """Pointwise maximum: the least vector that dominates both."""
    out = dict(a)
    for origin, c in b.items():
        if c > out.get(origin, 0):
            out[origin] = c
    return out


def vv_dominates(a: Mapping[str, int], b: Mapping[str, int]) -> bool:
    """True when ``a`` has seen everything ``b`` has (a >= b pointwise)."""
    return all(a.get(origin, 0) >= c for origin, c in b.items())


def vv_compare(a: Mapping[str, int], b: Mapping[str, int]) -> Ordering:
    ge, le = vv_dominates(a, b), vv_dominates(b, a)
    if ge and le:
        return Ordering.EQUAL
    if le:
        return Ordering.BEFORE
    if ge:
        return Ordering.AFTER
    return Ordering.CONCURRENT


# ---- range lists ---------------------------------------------------------------------------


def ranges_add(ranges: list[Range], lo: int, hi: int) -> list[Range]:
    """Returns ``ranges`` with ``[lo, hi]`` added, coalescing overlapping or adjacent ranges."""
    i = bisect.bisect_left(ranges, (lo, lo))
    # The range before may overlap or touch.
    if i > 0 and ranges[i - 1][1] >= lo - 1:
        i -= 1
    j = i
    while j < len(ranges) and ranges[j][0] <= hi + 1:
        lo = min(lo, ranges[j][0])
        hi = max(hi, ranges[j][1])
        j += 1
    return [*ranges[:i], (lo, hi), *ranges[j:]]


def ranges_union(a: list[Range], b: list[Range]) -> list[Range]:
    """Union of two sorted range lists, in linear time."""
    out: list[Range] = []
    for lo, hi in sorted(a + b) if len(a) + len(b) < 64 else _merge_sorted(a, b):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _merge_sorted(a: list[Range], b: list[Range]) -> Iterator[Range]:
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            yield a[i]
            i += 1
        else:
            yield b[j]
            j += 1
    yield from a[i:]
    yield from b[j:]


def ranges_subtract(a: Iterable[Range], b: list[Range]) -> list[Range]:
    """The counters in ``a`` that are not in ``b`` (both sorted and disjoint)."""
    out: list[Range] = []
    for lo, hi in a:
        i = max(bisect.bisect_right(b, (lo, MAX_COUNTER)) - 1, 0)
        cur = lo
        while i < len(b) and cur <= hi:
            blo, bhi = b[i]
            if bhi < cur:
                i += 1
                continue
            if blo > hi:
                break
            if blo > cur:
                out.append((cur, blo - 1))
            cur = bhi + 1
            i += 1
        if cur <= hi:
            out.append((cur, hi))
    return out


def ranges_contain(ranges: list[Range], counter: int) -> bool:
    i = bisect.bisect_right(ranges, (counter, MAX_COUNTER)) - 1
    return i >= 0 and ranges[i][0] <= counter <= ranges[i][1]


def ranges_size(ranges: Iterable[Range]) -> int:
    total = 0
    for lo, hi in ranges:
        total += hi - lo + 1
    return total


def ranges_of(counters: Iterable[int]) -> list[Range]:
    """Coalesces counters into sorted ranges."""
    out: list[Range] = []
    for c in sorted(set(counters)):
        if out and out[-1][1] == c - 1:
            out[-1] = (out[-1][0], c)
        else:
            out.append((c, c))
    return out


# ---- dot context ---------------------------------------------------------------------------


class DotContext:
    """The set of dots a replica has seen, compressed as ``base`` + ``cloud`` per origin.

    ``retired`` holds origins pruned by garbage collection (a departed node, or an old
    restart epoch of a live one) with the last counter that was seen of them. They are left out
    of digests and version vectors, but still answer :meth:`contains` so that a late message can
    never bring a dead dot of theirs back to life.
    """

    __slots__ = ("_base", "_cloud", "retired")

    def __init__(self) -> None:
        self._base: dict[str, int] = {}
        self._cloud: dict[str, list[Range]] = {}
        self.retired: dict[str, int] = {}

    # -- queries --

    def contains(self, origin: str, counter: int) -> bool:
        if counter <= self._base.get(origin, 0):
            return True
        cloud = self._cloud.get(origin)
        if cloud is not None and ranges_contain(cloud, counter):
            return True
        return counter <= self.retired.get(origin, 0)

    def origins(self) -> Iterable[str]:
        """Active (not retired) origins (every one has a ``_base`` entry, possibly 0)."""
        return self._base.keys()

    def base(self, origin: str) -> int:
        """Largest ``n`` such that every counter ``1..n`` of ``origin`` has been seen."""
        return self._base.get(origin, 0)

    def max(self, origin: str) -> int:
        cloud = self._cloud.get(origin)
        return cloud[-1][1] if cloud else self._base.get(origin, 0)

    def is_contiguous(self, origin: str) -> bool:
        return origin not in self._cloud

    def ranges(self, origin: str) -> list[Range]:
        base = self._base.get(origin, 0)
        head: list[Range] = [(1, base)] if base else []
        return head + self._cloud.get(origin, [])

    def to_ranges(self) -> dict[str, list[Range]]:
        return {o: self.ranges(o) for o in sorted(self.origins())}

    def version_vector(self) -> VersionVector:
        return {o: self.max(o) for o in self.origins()}

    def missing_from(self, other: DotContext) -> dict[str, list[Range]]:
        """Dots this context has seen that ``other`` has not (retired ones included)."""
        out: dict[str, list[Range]] = {}
        origins = set(self.origins()) | self.retired.keys()
        for o in origins:
            mine = (
                ranges_add(self.ranges(o), 1, self.retired[o])
                if o in self.retired
                else (self.ranges(o))
            )
            theirs = other.ranges(o)
            if o in other.retired:
                theirs = ranges_add(theirs, 1, other.retired[o])
            gap = ranges_subtract(mine, theirs)
            if gap:
                out[o] = gap
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DotContext):
            return NotImplemented
        return self.to_ranges() == other.to_ranges() and self.retired == other.retired

    def __repr__(self) -> str:
        return f"DotContext({self.to_ranges()!r}, retired={self.retired!r})"

    # -- updates --

    def add(self, origin: str, counter: int) -> None:
        self.add_range(origin, counter, counter)

    def add_range(self, origin: str, lo: int, hi: int) -> None:
        """Marks counters ``lo..hi`` of ``origin`` as seen."""
        retired = self.retired.get(origin)
        if retired is not None:
            if hi <= retired:
                return
            # A retired origin wrote again (its departure was a false alarm): bring it back
            # with everything up to its retirement point counted as seen.
            del self.retired[origin]
            self.add_range(origin, 1, retired)
            lo = max(lo, retired + 1)
        base = self._base.get(origin, 0)
        if hi <= base:
            return
        if lo <= base + 1:
            base = hi
            cloud = self._cloud.get(origin)
            if cloud:
                # Absorb cloud ranges that now touch the prefix.
                k = 0
                while k < len(cloud) and cloud[k][0] <= base + 1:
                    base = max(base, cloud[k][1])
                    k += 1
                if k == len(cloud):
                    del self._cloud[origin]
                else:
                    self._cloud[origin] = cloud[k:]
            self._base[origin] = base
            return
        self._cloud[origin] = ranges_add(self._cloud.get(origin, []), lo, hi)
        # Keep every active origin present in _base so iteration order is stable.
        self._base.setdefault(origin, 0)

    def set_ranges(self, origin: str, ranges: list[Range]) -> None:
        """Replaces what is known of ``origin`` with sorted, disjoint, non-adjacent ranges."""
        if ranges and ranges[0][0] == 1:
            self._base[origin] = ranges[0][1]
            ranges = ranges[1:]
        else:
            self._base[origin] = 0
        if ranges:
            self._cloud[origin] = list(ranges)
        else:
            self._cloud.pop(origin, None)

    def add_ranges(self, ranges: Mapping[str, Iterable[Range]]) -> None:
        for origin, rs in ranges.items():
            for lo, hi in rs:
                self.add_range(origin, lo, hi)

    def merge(self, other: DotContext) -> None:
        for origin, obase in other._base.items():
            cloud = other._cloud.get(origin)
            if cloud is None or (len(cloud) <= 2 and not obase):
                # The shape of an operation's delta: a prefix or a couple of points.
                if obase:
                    self.add_range(origin, 1, obase)
                for lo, hi in cloud or ():
                    self.add_range(origin, lo, hi)
                continue
            theirs = other.ranges(origin)
            if len(theirs) <= 2 or origin in self.retired:
                for lo, hi in theirs:
                    self.add_range(origin, lo, hi)
            else:
                # Many ranges (a state slice): one linear union instead of many inserts.
                self.set_ranges(origin, ranges_union(self.ranges(origin), theirs))
        for origin, final in other.retired.items():
            self.add_range(origin, 1, final)

    def retire(self, origin: str) -> int:
        """Moves a contiguous origin out of the active context; returns its final counter."""
        final = max(self._base.pop(origin, 0), self.retired.get(origin, 0))
        self._cloud.pop(origin, None)
        self.retired[origin] = final
        return final

    def forget_retired(self, keep: int) -> None:
        """Bounds the retired list, forgetting the oldest entries beyond ``keep``."""
        while len(self.retired) > keep:
            del self.retired[next(iter(self.retired))]

    def copy(self) -> DotContext:
        c = DotContext()
        c._base = dict(self._base)
        c._cloud = {o: list(r) for o, r in self._cloud.items()}
        c.retired = dict(self.retired)
        return c

    @classmethod
    def from_ranges(cls, ranges: Mapping[str, Iterable[Range]]) -> DotContext:
        c = cls()
        c.add_ranges(ranges)
        return c


# ---- hybrid logical clock ------------------------------------------------------------------

#: Low bits of an HLC timestamp hold the logical counter; the rest is wall time in ms.
LOGICAL_BITS = 16


def hlc_physical_ms(ts: int) -> int:
    return ts >> LOGICAL_BITS


def hlc_from_wall(now: float) -> int:
    """The smallest timestamp for wall time ``now`` (seconds since the epoch)."""
    return max(int(now * 1000), 0) << LOGICAL_BITS


class HybridClock:
    """Hybrid logical clock: close to wall time, yet strictly increasing and causal.

    ``tick(now)`` stamps a local event; ``observe(ts, now)`` folds in a timestamp received from a
    peer so that our next write sorts after it. Timestamps are single integers
    (``wall_ms << 16 | logical``), compared as plain ints; ties between nodes are broken by the
    writer's origin name in the LWW register, not here.
    """

    __slots__ = ("last", "max_skew")

    def __init__(self, last: int = 0, max_skew: float = 60.0) -> None:
        #: The largest timestamp issued or observed.
        self.last = last
        #: Remote timestamps further than this many seconds ahead of our wall clock are not
        #: folded in, so one peer with a broken clock cannot drag everyone into the future.
        self.max_skew = max_skew

    def tick(self, now: float) -> int:
        self.last = max(hlc_from_wall(now), self.last + 1)
        return self.last

    def observe(self, ts: int, now: float) -> None:
        if ts > self.last and ts <= hlc_from_wall(now + self.max_skew):
            self.last = ts

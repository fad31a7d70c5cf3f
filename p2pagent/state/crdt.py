"""The causal dot map: every replicated value, all CRDT types, as one delta-state CRDT.

State is ``namespace -> key -> KeyState`` plus one :class:`DotContext` for the whole map.
A key's state is a set of live *dots*, each carrying an immutable payload:

==========  =============================  ============================================
Kind        payload of one dot             read
==========  =============================  ============================================
LWW         ``(hlc_timestamp, value)``     the dot with the largest (hlc, origin, counter)
MV          ``value``                      every live dot's value: the siblings
COUNTER     ``(p, n)``: one origin's total  sum of ``p - n`` over live dots
SET         ``element``                    the distinct elements of live dots
==========  =============================  ============================================

Merge law (Almeida et al., "Delta State Replicated Data Types"): a dot survives a join when
both sides hold it, or one side holds it and the other has not *seen* it (its context lacks
it). A dot one side has seen but no longer holds was removed there, and stays removed. So the
join is commutative, associative and idempotent, and removal (overwrite, delete, set remove)
needs no tombstone: the context remembers it, compactly, as part of a version-vector prefix.

A *delta* is a small DotMap of the same shape: the dots an operation added, and a context of
exactly the dots it speaks for (the ones it added plus the ones it removed). Any subset of a
replica's facts is a valid delta as long as every dot of its context that is live at the
sender is in its entries; anti-entropy relies on this to cut a large state into slices.

Counters keep one dot per origin and key: an origin's increment folds its own live dots into
one cumulative dot, so a later dot of an origin makes its earlier ones on that key dead even
when the delta that said so was lost (see :meth:`DotMap._counter_superseded`).

Keys written concurrently with different kinds keep both kinds' dots (so the merge stays a
join); reads show the kind with the highest :class:`Kind` value, the next write replaces the
rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from enum import IntEnum
from typing import Any

from p2pagent.state.clocks import Dot, DotContext, Range, ranges_contain, ranges_size


class Kind(IntEnum):
    """The CRDT behind a key; numbers match ``p2pagent.v1.ValueType``."""

    LWW = 1
    MV = 2
    COUNTER = 3
    SET = 4


class KeyState:
    """The live dots of one key: the primary group of kind ``kind``, and rarely ``others``.

    Most keys hold exactly one dot, so the primary group is stored inline (``_dot`` and
    ``_payload``) and becomes a dict only when siblings appear: this halves a key's memory.
    ``ns`` and ``key`` let the dot index point straight at the key. Mutated in place by the
    owning :class:`DotMap` only.
    """

    __slots__ = ("_dot", "_many", "_payload", "key", "kind", "ns", "others")

    def __init__(self, kind: Kind, ns: str = "", key: str = "") -> None:
        self.kind = kind
        self.ns = ns
        self.key = key
        self._dot: Dot | None = None
        self._payload: Any = None
        self._many: dict[Dot, Any] | None = None
        self.others: dict[Kind, dict[Dot, Any]] | None = None

    @property
    def dots(self) -> dict[Dot, Any]:
        """The primary group (a fresh dict in the one-dot case: read it, do not change it)."""
        if self._many is not None:
            return self._many
        if self._dot is not None:
            return {self._dot: self._payload}
        return {}

    def visible_kind(self) -> Kind:
        if self.others is None:
            return self.kind
        return max(self.kind, *self.others)

    def dots_of(self, kind: Kind) -> dict[Dot, Any]:
        if kind == self.kind:
            return self.dots
        if self.others is None:
            return {}
        return self.others.get(kind, {})

    def groups(self) -> Iterator[tuple[Kind, dict[Dot, Any]]]:
        yield self.kind, self.dots
        if self.others is not None:
            yield from self.others.items()

    def all_dots(self) -> Iterator[Dot]:
        for _, dots in self.groups():
            yield from dots

    def has(self, dot: Dot) -> bool:
        if dot == self._dot or (self._many is not None and dot in self._many):
            return True
        return self.others is not None and any(dot in d for d in self.others.values())

    def _primary_empty(self) -> bool:
        return self._dot is None and self._many is None

    def add(self, kind: Kind, dot: Dot, payload: Any) -> None:
        if self._primary_empty() and self.others is None:
            self.kind = kind
        if kind == self.kind:
            if self._many is not None:
                self._many[dot] = payload
            elif self._dot is None:
                self._dot, self._payload = dot, payload
            else:
                self._many = {self._dot: self._payload, dot: payload}
                self._dot = self._payload = None
            return
        if self.others is None:
            self.others = {}
        self.others.setdefault(kind, {})[dot] = payload

    def remove(self, dot: Dot) -> bool:
        if dot == self._dot:
            self._dot = self._payload = None
        elif self._many is not None and dot in self._many:
            del self._many[dot]
            if len(self._many) == 1:
                ((self._dot, self._payload),) = self._many.items()
                self._many = None
        elif self.others is not None and any(dot in d for d in self.others.values()):
            for d in self.others.values():
                d.pop(dot, None)
        else:
            return False
        self._normalize()
        return True

    def is_empty(self) -> bool:
        return self._primary_empty() and self.others is None

    def size(self) -> int:
        return sum(len(d) for _, d in self.groups())

    def _normalize(self) -> None:
        """Drops empty kind groups; the primary group is non-empty whenever any group is."""
        if self.others is None:
            return
        self.others = {k: d for k, d in self.others.items() if d} or None
        if self._primary_empty() and self.others is not None:
            kind = max(self.others)
            group = self.others.pop(kind)
            self.kind = kind
            for dot, payload in group.items():
                self.add(kind, dot, payload)
            if not self.others:
                self.others = None

    def copy(self) -> KeyState:
        c = KeyState(self.kind, self.ns, self.key)
        c._dot, c._payload = self._dot, self._payload
        c._many = None if self._many is None else dict(self._many)
        if self.others is not None:
            c.others = {k: dict(d) for k, d in self.others.items()}
        return c

    def canonical(self) -> tuple[Any, ...]:
        return tuple(
            sorted((int(k), dot, _sortable(p)) for k, d in self.groups() for dot, p in d.items())
        )


def _sortable(payload: Any) -> Any:
    return payload if isinstance(payload, tuple) else (payload,)


class DotMap:
    """``namespace -> key -> KeyState`` plus the causal context of the whole map.

    ``index`` maps each live dot (origin, then counter) to its key's state, so that a delta
    whose context removes dots (a delete seen through anti-entropy) finds them without scanning
    every key.
    """

    __slots__ = ("context", "entries", "index", "reshaped", "summary")

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, KeyState]] = {}
        self.context = DotContext()
        self.index: dict[str, dict[int, KeyState]] = {}
        #: Namespaces where a key appeared or disappeared (the owner clears it; scans use it).
        self.reshaped: set[str] = set()
        #: origin -> XOR of :func:`counter_hash` over its live dots. Two replicas that have seen
        #: the same dots of an origin but disagree here disagree on which of them are dead.
        self.summary: dict[str, int] = {}

    # -- reading --

    def key(self, ns: str, key: str) -> KeyState | None:
        keys = self.entries.get(ns)
        return None if keys is None else keys.get(key)

    def items(self) -> Iterator[tuple[str, str, KeyState]]:
        for ns, keys in self.entries.items():
            for key, ks in keys.items():
                yield ns, key, ks

    def key_count(self) -> int:
        return sum(len(keys) for keys in self.entries.values())

    def dot_count(self) -> int:
        return sum(len(c) for c in self.index.values())

    def locate(self, dot: Dot) -> tuple[str, str] | None:
        counters = self.index.get(dot[0])
        ks = None if counters is None else counters.get(dot[1])
        return None if ks is None else (ks.ns, ks.key)

    def live_in(self, origin: str, ranges: list[Range]) -> list[tuple[int, str, str]]:
        """Live dots of ``origin`` whose counters fall in ``ranges``: (counter, ns, key)."""
        counters = self.index.get(origin)
        if not counters:
            return []
        out: list[tuple[int, str, str]] = []
        if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
            ks = counters.get(ranges[0][0])  # the common case: one removed dot
            if ks is not None:
                out.append((ranges[0][0], ks.ns, ks.key))
        elif ranges_size(ranges) <= len(counters):
            for lo, hi in ranges:
                for c in range(lo, hi + 1):
                    ks = counters.get(c)
                    if ks is not None:
                        out.append((c, ks.ns, ks.key))
        else:
            for c, ks in counters.items():
                if ranges_contain(ranges, c):
                    out.append((c, ks.ns, ks.key))
        return out

    def canonical(self) -> tuple[Any, ...]:
        """A comparable form of the whole state (tests use it to check the merge laws)."""
        keys = tuple(sorted((ns, key, ks.canonical()) for ns, key, ks in self.items()))
        ctx = tuple(sorted((o, tuple(r)) for o, r in self.context.to_ranges().items()))
        return keys, ctx

    # -- changing --

    def add_dot(self, ns: str, key: str, kind: Kind, dot: Dot, payload: Any) -> None:
        """Adds a live dot (the caller has checked that the context has not seen it)."""
        keys = self.entries.get(ns)
        if keys is None:
            keys = self.entries[ns] = {}
        ks = keys.get(key)
        if ks is None:
            ks = keys[key] = KeyState(kind, ns, key)
            self.reshaped.add(ns)
        ks.add(kind, dot, payload)
        counters = self.index.get(dot[0])
        if counters is None:
            counters = self.index[dot[0]] = {}
        counters[dot[1]] = ks
        self.summary[dot[0]] = self.summary.get(dot[0], 0) ^ counter_hash(dot[1])

    def remove_dot(self, ns: str, key: str, dot: Dot) -> None:
        keys = self.entries[ns]
        ks = keys[key]
        ks.remove(dot)
        if ks.is_empty():
            del keys[key]
            self.reshaped.add(ns)
            if not keys:
                del self.entries[ns]
        counters = self.index[dot[0]]
        del counters[dot[1]]
        if not counters:
            del self.index[dot[0]]
            del self.summary[dot[0]]
        else:
            self.summary[dot[0]] ^= counter_hash(dot[1])

    def merge(self, delta: DotMap) -> tuple[set[tuple[str, str]], int]:
        """Joins ``delta`` into this map in place. Returns the keys whose live dots changed,
        and the largest LWW timestamp among the dots it added (0 if none), for the HLC."""
        changed: set[tuple[str, str]] = set()
        contains = self.context.contains
        max_ts = 0
        # 1. Dots the delta holds that we have never seen become live here.
        for ns, keys in delta.entries.items():
            for key, ks in keys.items():
                if ks.others is None and ks._many is None and ks._dot is not None:
                    items: Iterable[tuple[Kind, Dot, Any]] = ((ks.kind, ks._dot, ks._payload),)
                else:
                    items = ((k, d, p) for k, dots in ks.groups() for d, p in dots.items())
                for kind, dot, payload in items:
                    if not contains(dot[0], dot[1]):
                        if kind is Kind.COUNTER and self._counter_superseded(ns, key, dot):
                            continue
                        self.add_dot(ns, key, kind, dot, payload)
                        changed.add((ns, key))
                        if kind is Kind.LWW and payload[0] > max_ts:
                            max_ts = payload[0]
        # 2. Dots the delta has seen but does not hold were removed there: remove them here.
        dctx = delta.context
        index = self.index
        for origin in dctx.origins():
            counters = index.get(origin)
            if counters is None:
                continue
            ranges = dctx.ranges(origin)
            if ranges_size(ranges) <= 16:
                # An operation's delta: a few dots, looked up one by one.
                found = [
                    (c, hit.ns, hit.key)
                    for lo, hi in ranges
                    for c in range(lo, hi + 1)
                    if (hit := counters.get(c)) is not None
                ]
            else:
                found = self.live_in(origin, ranges)
            for c, ns, key in found:
                dks = delta.key(ns, key)
                if dks is None or not dks.has((origin, c)):
                    self.remove_dot(ns, key, (origin, c))
                    changed.add((ns, key))
        # 3. Everything the delta has seen is now seen here too.
        self.context.merge(dctx)
        return changed, max_ts

    def _counter_superseded(self, ns: str, key: str, dot: Dot) -> bool:
        """Keeps one counter dot per origin and key, the origin's latest.

        An origin's increment folds every counter dot of its own that is live there into one
        new cumulative dot, so a later dot of the same origin and key makes an earlier one
        dead, whether or not the delta that removed it has arrived. Without this rule a lost
        delta breaks the chain (each increment's context names only the dot it replaced): the
        dot before the lost one stayed live beside the new one and reads counted that origin
        twice until anti-entropy compared live-dot summaries. Returns whether ``dot`` is itself
        the earlier one (then it is not added); removes live earlier dots otherwise.
        """
        ks = self.key(ns, key)
        if ks is None:
            return False
        origin, counter = dot
        older = []
        for live in ks.dots_of(Kind.COUNTER):
            if live[0] == origin:
                if live[1] > counter:
                    return True
                older.append(live)
        for live in older:
            self.remove_dot(ns, key, live)
        return False

    def copy(self) -> DotMap:
        c = DotMap()
        c.entries = {
            ns: {k: ks.copy() for k, ks in keys.items()} for ns, keys in self.entries.items()
        }
        c.context = self.context.copy()
        c.index = {
            o: {n: c.entries[ks.ns][ks.key] for n, ks in cs.items()} for o, cs in self.index.items()
        }
        c.summary = dict(self.summary)
        return c


_MASK = (1 << 64) - 1


def counter_hash(counter: int) -> int:
    """A well-mixed 63-bit hash of a counter (Fibonacci hashing and a fold), XOR-ed into
    summaries; cheap because it runs for every dot added or removed."""
    z = (counter * 0x9E3779B97F4A7C15) & _MASK
    return (z ^ (z >> 29)) >> 1


def join(a: DotMap, b: DotMap) -> DotMap:
    """The functional join ``a ⊔ b`` (neither argument changes)."""
    out = a.copy()
    out.merge(b)
    return out

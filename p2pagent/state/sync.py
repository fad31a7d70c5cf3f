"""Cutting what a peer lacks into messages under the size limit.

Two sources, chosen per origin by the replica:

- buffered operation deltas (:func:`pack_deltas`): whole deltas packed greedily into messages;
  a delta that alone exceeds the budget is cut into slices like a state;
- state slices (:func:`slice_gap`): for a gap of counters of one origin, every dot of that gap
  that is still live here (with its key and payload), plus the dead rest of the gap as bare
  context ranges (those dots were removed here, and the receiver must remove them too). Each
  slice is a valid delta on its own — its context names exactly the dots it speaks for — so
  slices can be lost, duplicated or reordered, and a large catch-up needs no session state.

Sizes are upper bounds computed from field lengths (see :func:`codec.dot_bound`), so no slice
is encoded twice and none can exceed the limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from p2pagent.state.clocks import Range
from p2pagent.state.codec import ENVELOPE_BYTES, dot_bound, range_bound, str_bound
from p2pagent.state.crdt import DotMap, Kind
from p2pagent.state.messages import Delta, DeltaMessage


@dataclass(frozen=True, slots=True)
class _LiveDot:
    ns: str
    key: str
    kind: Kind
    origin: str
    counter: int
    payload: Any
    size: int


@dataclass(frozen=True, slots=True)
class _DeadRange:
    origin: str
    lo: int
    hi: int
    size: int


_Piece = _LiveDot | _DeadRange


def message_budget(max_message_bytes: int, sender: str) -> int:
    """Bytes available to deltas in one message from ``sender``."""
    return max_message_bytes - ENVELOPE_BYTES - str_bound(sender)


def delta_bound(delta: Delta) -> int:
    """Upper bound of a delta's encoded size inside a message."""
    size = 16 + (0 if delta.op is None else str_bound(delta.op.origin) + 20)
    state = delta.state
    for ns, key, ks in state.items():
        for kind, dots in ks.groups():
            for (origin, _), payload in dots.items():
                size += dot_bound(ns, key, origin, kind, payload)
    ctx = state.context
    for origin in ctx.origins():
        size += range_bound(origin) * len(ctx.ranges(origin))
    return size


def pack_deltas(deltas: Iterable[Delta], sender: str, max_message_bytes: int) -> list[DeltaMessage]:
    """Packs whole deltas greedily into messages; oversized ones are cut into slices."""
    budget = message_budget(max_message_bytes, sender)
    out: list[DeltaMessage] = []
    batch: list[Delta] = []
    used = 0
    seen: set[int] = set()
    for delta in deltas:
        if id(delta) in seen:
            continue  # one buffered delta can cover several gaps
        seen.add(id(delta))
        size = delta_bound(delta)
        if size > budget:
            out += _pack_pieces(_pieces_of(delta.state), sender, budget)
            continue
        if used + size > budget:
            out.append(DeltaMessage(sender, tuple(batch)))
            batch, used = [], 0
        batch.append(delta)
        used += size
    if batch:
        out.append(DeltaMessage(sender, tuple(batch)))
    return out


def slice_gap(
    state: DotMap, gap: dict[str, list[Range]], sender: str, max_message_bytes: int
) -> list[DeltaMessage]:
    """State slices telling a peer everything this replica knows about the dots in ``gap``."""
    budget = message_budget(max_message_bytes, sender)
    return _pack_pieces(_gap_pieces(state, gap), sender, budget)


def dead_slices(
    state: DotMap, ranges: dict[str, list[Range]], sender: str, max_message_bytes: int
) -> list[DeltaMessage]:
    """Slices naming only the dead dots in ``ranges``: a peer that has seen the same dots but
    missed some removals drops the ones it still holds."""
    budget = message_budget(max_message_bytes, sender)
    return _pack_pieces(_gap_pieces(state, ranges, live=False), sender, budget)


def _gap_pieces(state: DotMap, gap: dict[str, list[Range]], live: bool = True) -> Iterator[_Piece]:
    """Pieces in counter order, so each slice covers a contiguous window of counters and its
    context compresses to a single range the receiver appends to its prefix."""
    for origin in sorted(gap):
        ranges = gap[origin]
        held = sorted(state.live_in(origin, ranges))
        for piece in _window(state, origin, ranges, held):
            if live or isinstance(piece, _DeadRange):
                yield piece


def _pieces_of(state: DotMap) -> Iterator[_Piece]:
    """The pieces of an arbitrary delta: its live dots and the dead part of its context."""
    ctx = state.context
    for origin in ctx.origins():
        counters = state.index.get(origin, {})
        live = sorted((c, ks.ns, ks.key) for c, ks in counters.items())
        yield from _window(state, origin, ctx.ranges(origin), live)


def _window(
    state: DotMap, origin: str, ranges: list[Range], live: list[tuple[int, str, str]]
) -> Iterator[_Piece]:
    rb = range_bound(origin)
    i = 0
    for lo, hi in ranges:
        cur = lo
        while i < len(live) and live[i][0] <= hi:
            counter, ns, key = live[i]
            i += 1
            if counter < cur:
                continue
            if counter > cur:
                yield _DeadRange(origin, cur, counter - 1, rb)
            yield _live_piece(state, ns, key, (origin, counter))
            cur = counter + 1
        if cur <= hi:
            yield _DeadRange(origin, cur, hi, rb)


def _live_piece(state: DotMap, ns: str, key: str, dot: tuple[str, int]) -> _LiveDot:
    ks = state.entries[ns][key]
    for kind, dots in ks.groups():
        if dot in dots:
            payload = dots[dot]
            return _LiveDot(
                ns, key, kind, dot[0], dot[1], payload, dot_bound(ns, key, dot[0], kind, payload)
            )
    raise AssertionError(f"index names dot {dot} at {ns}/{key}, which does not hold it")


def _pack_pieces(pieces: Iterable[_Piece], sender: str, budget: int) -> list[DeltaMessage]:
    out: list[DeltaMessage] = []
    current = DotMap()
    seen: dict[str, list[Range]] = {}
    used = 16

    def flush() -> None:
        nonlocal current, seen, used
        if used > 16:
            for origin, ranges in seen.items():
                current.context.set_ranges(origin, ranges)
            out.append(DeltaMessage(sender, (Delta(current),)))
        current, seen, used = DotMap(), {}, 16

    for piece in pieces:
        if used + piece.size > budget:
            flush()
        if isinstance(piece, _LiveDot):
            dot = (piece.origin, piece.counter)
            current.add_dot(piece.ns, piece.key, piece.kind, dot, piece.payload)
            lo = hi = piece.counter
        else:
            lo, hi = piece.lo, piece.hi
        # Pieces of one origin come in increasing counter order: extend or append.
        ranges = seen.setdefault(piece.origin, [])
        if ranges and lo <= ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], max(hi, ranges[-1][1]))
        else:
            ranges.append((lo, hi))
        used += piece.size
    flush()
    return out

"""Load hints: each member's latest small summary of how busy it is, spread by the membership
gossip that already flows (memberlist and Serf carry node metadata the same way).

Before hints, the tasks layer sent a full load report to every peer four times a second:
O(N) messages per node per interval, O(N^2) for the mesh, whether anyone was busy or not. A
hint instead rides on SWIM's own messages: a member publishes one only when its load changed
materially (the tasks layer decides what that means, ``tasks/hinting.py``); the hint is
piggybacked on pings, acks and gossip rounds, ``retransmit_limit`` times per holder like any
membership update, and push-pull exchanges carry every known hint, so a joiner learns them
all at once. An idle mesh sends no hint at all.

A hint is a claim made by a peer, so nothing in it is trusted (the issue's "Bad input"):

- a hint about a member we do not know (or know to be gone) is dropped: ``not_member``;
- a hint whose numbers are out of range (negative counts, NaN or infinite backlog, absurd
  speed or capacity, too many models) is dropped: ``out_of_range``;
- a hint no newer than the last one accepted from that member is dropped: ``stale``.

Each is counted (``HintTable.rejected``) and never reaches the tasks layer. Ordering is by
``seq``, which the member stamps itself; a restarted member that hears its previous life's
hint continues above it (as it does with its incarnation).

Pure: no clock, no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass

#: Bounds of one hint; beyond them the hint is out of range (a node cannot be that busy, and a
#: bigger hint would crowd out membership updates in the messages it rides on).
MAX_HINT_MODELS = 16
MAX_HINT_QUEUED = 8
MAX_BACKLOG_S = 7 * 86_400.0
MAX_COUNT = 10_000_000
MAX_CAPACITY = 10_000
MAX_SPEED = 1_000.0
MAX_MODEL_NAME = 256
#: Hints piggybacked on one protocol message at most (after the membership updates).
MAX_HINTS_PER_MESSAGE = 4

NOT_MEMBER = "not_member"
OUT_OF_RANGE = "out_of_range"
STALE = "stale"


@dataclass(frozen=True, slots=True)
class QueuedWork:
    """Queued work for one model that the hinting node would hand to a thief."""

    model: str
    count: int
    #: Sum of compute estimates, speed-1.0 seconds.
    cost_s: float


@dataclass(frozen=True, slots=True)
class LoadHint:
    """One member's load as of its ``seq``-th hint."""

    node: str
    seq: int
    #: Seconds to drain everything queued and running there.
    backlog_s: float
    queue_len: int
    running: int
    #: Execution slots and relative speed (1.0 = reference node).
    capacity: int
    speed: float
    #: Models the node can serve now.
    models: tuple[str, ...] = ()
    #: Stealable queued work by model (the largest few).
    queued: tuple[QueuedWork, ...] = ()


def out_of_range(h: LoadHint) -> str | None:
    """Why ``h`` cannot be believed, or None when every number is plausible."""

    def finite(x: float, hi: float) -> bool:
        return math.isfinite(x) and 0.0 <= x <= hi

    if not finite(h.backlog_s, MAX_BACKLOG_S):
        return f"backlog_s {h.backlog_s} outside [0, {MAX_BACKLOG_S}]"
    if not (0 <= h.queue_len <= MAX_COUNT and 0 <= h.running <= MAX_COUNT):
        return f"queue_len {h.queue_len} / running {h.running} outside [0, {MAX_COUNT}]"
    if not 1 <= h.capacity <= MAX_CAPACITY:
        return f"capacity {h.capacity} outside [1, {MAX_CAPACITY}]"
    if not (finite(h.speed, MAX_SPEED) and h.speed > 0):
        return f"speed {h.speed} outside (0, {MAX_SPEED}]"
    if len(h.models) > MAX_HINT_MODELS or len(h.queued) > MAX_HINT_QUEUED:
        return f"{len(h.models)} models / {len(h.queued)} queued entries, over the bounds"
    if any(not 0 < len(m) <= MAX_MODEL_NAME for m in h.models):
        return "a model name is empty or too long"
    for q in h.queued:
        if not (0 < len(q.model) <= MAX_MODEL_NAME and 0 <= q.count <= h.queue_len):
            return f"queued entry {q.model[:32]!r} counts {q.count} of {h.queue_len} queued"
        if not finite(q.cost_s, MAX_BACKLOG_S * h.capacity * h.speed):
            return f"queued entry {q.model[:32]!r} costs {q.cost_s}"
    return None


class HintTable:
    """The newest believable hint of each member, and what was refused and why."""

    def __init__(self) -> None:
        self._latest: dict[str, LoadHint] = {}
        #: Refused hints by reason (``NOT_MEMBER``, ``OUT_OF_RANGE``, ``STALE``).
        self.rejected: Counter[str] = Counter()
        self.accepted = 0

    def __len__(self) -> int:
        return len(self._latest)

    def offer(self, hint: LoadHint, is_member: bool) -> bool:
        """Keeps ``hint`` if it is believable and newer; True when kept."""
        reason = None
        if not is_member:
            reason = NOT_MEMBER
        elif out_of_range(hint) is not None:
            reason = OUT_OF_RANGE
        else:
            known = self._latest.get(hint.node)
            if known is not None and known.seq >= hint.seq:
                reason = STALE
        if reason is not None:
            self.rejected[reason] += 1
            return False
        self._latest[hint.node] = hint
        self.accepted += 1
        return True

    def get(self, node: str) -> LoadHint | None:
        return self._latest.get(node)

    def forget(self, node: str) -> None:
        self._latest.pop(node, None)

    def all(self) -> list[LoadHint]:
        """Every kept hint, by node name (deterministic)."""
        return [h for _, h in sorted(self._latest.items())]


class HintQueue:
    """Hints waiting to be piggybacked: one per member (the newest replaces an older one),
    each sent ``max_transmits`` times, least-sent first (as ``broadcasts.TransmitQueue``)."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[int, LoadHint]] = {}

    def __bool__(self) -> bool:
        return bool(self._pending)

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, hint: LoadHint) -> None:
        self._pending.pop(hint.node, None)
        self._pending[hint.node] = (0, hint)

    def drop(self, node: str) -> None:
        self._pending.pop(node, None)

    def take(self, limit: int, max_transmits: int, skip: str = "") -> list[LoadHint]:
        """Up to ``limit`` hints for one message to ``skip`` (its own hint is left out)."""
        if not self._pending:
            return []
        # Least transmitted first; newest first among equals (dicts keep insertion order).
        order = sorted(
            (item for item in reversed(self._pending.items()) if item[0] != skip),
            key=lambda item: item[1][0],
        )[:limit]
        out: list[LoadHint] = []
        for node, (sent, hint) in order:
            out.append(hint)
            if sent + 1 >= max_transmits:
                del self._pending[node]
            else:
                self._pending[node] = (sent + 1, hint)
        return out


class HintDissemination:
    """One member's part in spreading load hints: it stamps its own hints with its name and
    the next ``seq``, takes in the hints other members send (believable ones are queued to be
    passed on and reported once as events), and forgets a member's hint when it dies or
    leaves. The SWIM core owns one and calls it from its message and membership rules; the
    table and queue are the ones its outbox piggybacks from.
    """

    def __init__(self, me: str, table: HintTable, queue: HintQueue) -> None:
        self.me = me
        self.table = table
        self.queue = queue
        #: Hints this member published.
        self.published = 0
        self._seq = 0
        self._events: list[LoadHint] = []

    def publish(self, hint: LoadHint) -> bool:
        """Stamps and queues this member's new hint; False when it is out of range (our own
        numbers are wrong: better to say nothing than to lie)."""
        self._seq += 1
        hint = dataclasses.replace(hint, node=self.me, seq=self._seq)
        if not self.table.offer(hint, is_member=True):
            return False
        self.published += 1
        self.queue.put(hint)
        return True

    def offer(self, hint: LoadHint, is_member: bool) -> None:
        """A hint received from a peer; ``is_member``: its node is a reachable member."""
        if hint.node == self.me:
            # Our own hint coming back. One from a previous life can be ahead of this one's
            # count: continue above it and say our current load again, or every member
            # would take it for stale (as a restarted member outbids its old incarnation).
            if hint.seq > self._seq:
                self._seq = hint.seq
                mine = self.table.get(self.me)
                if mine is not None:
                    self.publish(mine)
            return
        if self.table.offer(hint, is_member):
            self.queue.put(hint)
            self._events.append(hint)

    def forget(self, node: str) -> None:
        """``node`` died or left: its hint is neither kept nor passed on."""
        self.table.forget(node)
        self.queue.drop(node)

    def take_events(self) -> list[LoadHint]:
        """Hints of other members accepted since the last call, oldest first."""
        events, self._events = self._events, []
        return events

"""When a sequence waiting in this node's queue is offered to a peer again.

Placement (``placement``) runs once, when a sequence arrives. A node without room keeps the
sequence in its queue, and a peer that becomes idle afterwards would never learn of it: no
node gathers every peer's load. So the node that holds waiting sequences asks again, by
these rules (pure: time is passed in as ``now``; the driver is ``mover.py``):

1. Only a sequence still waiting for admission moves: never once it was admitted here, so
   never after its first token (the driver checks this under the engine's lock, in the same
   step as the admission could happen, and only after a peer already sent the sequence's
   first message: the sequence is never without a node that runs it).
2. A sequence is offered to peers only after it waited ``after_s``
   (``generation.move_waiting_after_s``): a queue that drains by itself soon is not worth
   a probe.
3. One attempt at a time per model version, for the oldest waiting sequence: it has waited
   longest, and it is the one this node would admit first (the queue keeps its order).
4. An attempt asks ``placement_probes`` random peers (power of two choices, as at arrival)
   and tries only those that reported room, best first by placement's order; this node is
   not among them (it already holds the sequence).
5. After an attempt that moved a sequence the next oldest is tried at once (the peer may
   have room for more); after one that found no peer to take it the next waits ``after_s``,
   doubling up to ``max_gap_s``, so a mesh that is busy everywhere costs each busy node a few
   probes per model per ``max_gap_s``. A move resets the gap.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from p2pagent.inference.generation.placement import HERE, Load, attempt_order

K = TypeVar("K", bound=Hashable)


@dataclass
class MovePacer:
    """Rules 2, 3 and 5 for one model version's queue."""

    after_s: float
    max_gap_s: float
    _gap_s: float = field(default=0.0, init=False)
    _not_before: float = field(default=-math.inf, init=False)

    def __post_init__(self) -> None:
        self._gap_s = self.after_s

    def due(self, waiting_since: Iterable[float]) -> float | None:
        """When the next attempt is due for sequences that started waiting at
        ``waiting_since``; None when nothing waits (no attempt will be due)."""
        oldest = min(waiting_since, default=None)
        if oldest is None:
            return None
        return max(oldest + self.after_s, self._not_before)

    def pick(self, waiting: Mapping[K, float], now: float) -> K | None:
        """The sequence to offer to peers now (the oldest, once due), or None."""
        due = self.due(waiting.values())
        if due is None or now < due:
            return None
        return min(waiting, key=lambda k: waiting[k])

    def record(self, now: float, *, moved: bool) -> None:
        """An attempt ended at ``now``, having moved its sequence or not."""
        if moved:
            self._gap_s = self.after_s
            self._not_before = now
        else:
            self._not_before = now + self._gap_s
            self._gap_s = min(self.max_gap_s, self._gap_s * 2)


def destinations(answers: Iterable[Load]) -> list[str]:
    """Rule 4: the peers to try for a waiting sequence, best first: only those with room."""
    busy_here = Load(HERE, loaded=True, room=False)
    return [node for node in attempt_order(busy_here, answers) if node != HERE]

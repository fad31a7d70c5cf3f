"""The dissemination queue: updates waiting to be piggybacked, each sent a bounded number
of times (SWIM's infection-style dissemination).

An update about a member replaces any queued update about the same member, so the queue never
holds more than one entry per member. `take` hands out the least-transmitted entries first
(most recently queued first among equals), which is what spreads a fresh update fastest.
"""

from __future__ import annotations

import math

from p2pagent.membership.messages import State, Update

#: Updates about the recipient itself that are still sent to it: the ones it must refute.
_ABOUT_RECIPIENT = (State.SUSPECT, State.DEAD)


def retransmit_limit(mult: int, members: int) -> int:
    """memberlist's limit: ``mult * ceil(log10(N + 1))`` transmissions per update."""
    return mult * max(1, math.ceil(math.log10(members + 1)))


class TransmitQueue:
    def __init__(self) -> None:
        # Buckets by transmit count; each maps member name -> (insertion id, update).
        self._buckets: list[dict[str, tuple[int, Update]]] = [{}]
        self._where: dict[str, int] = {}
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._where)

    def __bool__(self) -> bool:
        return bool(self._where)

    def put(self, update: Update) -> None:
        old = self._where.pop(update.name, None)
        if old is not None:
            del self._buckets[old][update.name]
        self._next_id += 1
        self._buckets[0][update.name] = (self._next_id, update)
        self._where[update.name] = 0

    def pending(self, name: str) -> Update | None:
        bucket = self._where.get(name)
        return None if bucket is None else self._buckets[bucket][name][1]

    def take(self, limit: int, max_transmits: int, skip: str = "") -> list[Update]:
        """Up to ``limit`` updates to piggyback on one message; counts the transmission and
        retires updates sent ``max_transmits`` times. ``skip`` is the recipient: news of its
        own life is left for others, but a suspicion or death of it goes to it like to anyone
        (as in memberlist), since it is the one member that can refute it. Leaving those out
        made the buddy probe the suspect's only way to learn, and under loss it learned too
        late."""
        if not self._where:
            return []
        out: list[tuple[str, int, Update]] = []
        for count, bucket in enumerate(self._buckets):
            # Most recently queued first (dicts keep insertion order): fresh news spreads first.
            for name in reversed(bucket):
                if len(out) >= limit:
                    break
                update = bucket[name][1]
                if name != skip or update.state in _ABOUT_RECIPIENT:
                    out.append((name, count, update))
            if len(out) >= limit:
                break
        for name, count, _ in out:
            ident, update = self._buckets[count].pop(name)
            if count + 1 >= max_transmits:
                del self._where[name]
                continue
            while len(self._buckets) <= count + 1:
                self._buckets.append({})
            self._buckets[count + 1][name] = (ident, update)
            self._where[name] = count + 1
        return [u for _, _, u in out]

    def drop(self, name: str) -> None:
        bucket = self._where.pop(name, None)
        if bucket is not None:
            del self._buckets[bucket][name]

"""Catching up after a mass join: push-pulls that gossip alone would leave to chance.

A join's Alive update spreads by gossip, ``retransmit_limit`` sends per holder to random
members. That reaches everyone with high probability, not certainty: at N = 64 a member
misses one update with probability about ``(1 - 1/N) ** (N * limit)`` = e^-8, and with 64
members joining at once there are 4,000 (member, update) pairs, so a mass join usually left
one member not knowing one other until the next periodic push-pull (a minute at N = 64,
since that interval grows with N; measured: 64 daemons started at once, every member but one
saw all others alive 19 s after the last answered, the last after 56 s; the simulator shows
the same tail). Two repairs, both free in a steady mesh:

* ``CatchUp``: a member that just joined keeps push-pulling with one random member every
  ``catch_up_delay`` while its table keeps growing, and stops after ``CATCH_UP_ROUNDS`` in a
  row taught it nothing. A lone joiner into a settled mesh makes ``CATCH_UP_ROUNDS`` extra
  exchanges; members joining together keep exchanging tables until all of them are in.
* ``UnknownSenders``: a message from a member we have never heard of (it knows us, we do not
  know it) is answered with a push-pull to it, at most once per address per
  ``UNKNOWN_SENDER_QUIET_S``: the sender's own table names it with its true incarnation and
  tags. The sender's identity was checked by the driver (its certificate names it).

Pure: ``now`` is passed in.
"""

from __future__ import annotations

import math

#: Catch-up push-pulls in a row that taught nothing, after which a member stops catching up.
CATCH_UP_ROUNDS = 2
#: A sender we do not know is asked for its table at most once per this many seconds.
UNKNOWN_SENDER_QUIET_S = 5.0
#: Addresses remembered by ``UnknownSenders``; beyond it, expired ones are dropped.
UNKNOWN_SENDER_MEMORY = 1024


def catch_up_delay(probe_interval: float) -> float:
    """Seconds between catch-up push-pulls: one probe interval, time for a round of gossip
    to bring what it can before the full table is asked for."""
    return probe_interval


class CatchUp:
    """The catch-up push-pulls of a member that just joined (see the module docstring)."""

    def __init__(self) -> None:
        self.rounds_left = 0
        self.next_at = math.inf

    @property
    def active(self) -> bool:
        return self.rounds_left > 0

    def start(self, now: float, delay: float) -> None:
        """Our own join: catch up until ``CATCH_UP_ROUNDS`` exchanges teach nothing."""
        self.rounds_left = CATCH_UP_ROUNDS
        self.next_at = min(self.next_at, now + delay)

    def learned(self, now: float, delay: float) -> None:
        """A member new to us was added: while catching up, the count starts again."""
        if self.active:
            self.start(now, delay)

    def due(self, now: float, delay: float) -> bool:
        """Whether a catch-up push-pull goes out now; schedules the next one if any."""
        if now < self.next_at:
            return False
        self.rounds_left -= 1
        self.next_at = now + delay if self.active else math.inf
        return True


class UnknownSenders:
    """Addresses of unknown senders we push-pulled with, and when (rate limit per address)."""

    def __init__(self) -> None:
        self._asked: dict[str, float] = {}
        self.asked = 0

    def should_ask(self, address: str, now: float) -> bool:
        last = self._asked.get(address)
        if last is not None and now - last < UNKNOWN_SENDER_QUIET_S:
            return False
        if len(self._asked) >= UNKNOWN_SENDER_MEMORY:
            self._asked = {a: t for a, t in self._asked.items() if now - t < UNKNOWN_SENDER_QUIET_S}
            if len(self._asked) >= UNKNOWN_SENDER_MEMORY:
                return False  # a flood of strangers: the periodic push-pull will do
        self._asked[address] = now
        self.asked += 1
        return True

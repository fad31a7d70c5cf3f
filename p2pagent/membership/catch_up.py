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
  ``catch_up_delay`` while its table keeps growing (by any route), backs off (the gap
  doubles) while it does not, and stops after ``CATCH_UP_ROUNDS`` quiet rounds in a row. A
  lone joiner into a settled mesh makes ``CATCH_UP_ROUNDS`` extra exchanges over about
  ``2 ** CATCH_UP_ROUNDS`` delays; members joining together keep exchanging tables until
  all of them are in, through lulls of that length (on two busy cores, 64 daemons' joins
  trickled in over 20 s with lulls of 6 s: a fixed two rounds ended too soon).
* ``UnknownSenders``: a message from a member we have never heard of (it knows us, we do not
  know it) is answered with a push-pull to it, at most once per address per
  ``UNKNOWN_SENDER_QUIET_S``: the sender's own table names it with its true incarnation and
  tags. The sender's identity was checked by the driver (its certificate names it).

Pure: ``now`` is passed in.
"""

from __future__ import annotations

import math

#: Catch-up rounds in a row without news, after which a member stops catching up.
CATCH_UP_ROUNDS = 4
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
        self.quiet_left = 0
        self.next_at = math.inf
        self._gap = 0.0
        self._news = False

    @property
    def active(self) -> bool:
        return self.quiet_left > 0

    def start(self, now: float, delay: float) -> None:
        """Our own join: catch up until ``CATCH_UP_ROUNDS`` rounds in a row bring no news."""
        self.quiet_left = CATCH_UP_ROUNDS
        self._gap = delay
        self._news = False
        self.next_at = min(self.next_at, now + delay)

    def learned(self) -> None:
        """A member new to us was added (by gossip or a push-pull)."""
        if self.active:
            self._news = True

    def due(self, now: float, delay: float) -> bool:
        """Whether a catch-up push-pull goes out now; schedules the next one, if any."""
        if now < self.next_at:
            return False
        if self._news:
            self.quiet_left, self._gap, self._news = CATCH_UP_ROUNDS, delay, False
        else:
            self.quiet_left -= 1
            if not self.active:
                self.next_at = math.inf
                return False
            self._gap *= 2
        self.next_at = now + self._gap
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

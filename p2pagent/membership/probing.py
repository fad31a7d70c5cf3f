"""The bookkeeping of SWIM's failure detection: the probe in flight, the indirect probes run on
behalf of others, and whom to probe next.

The SWIM core decides what to send; these small records keep what it waits for, so that its
deadlines can be read off them (`next_deadline`) and each rule has one place:

* Probe order: every probe interval, the next member of a shuffled round-robin over the
  reachable peers (every member is probed within N intervals, unlike a random pick each time),
  except that suspects due a last look (see `suspicion`) go first.
* A probe: no ack within the probe timeout, ping once more and ask others to ping the target
  (PING_REQ); no ack by the end of the interval, the target becomes suspect. Helpers that
  cannot reach the target either answer NACK: missing NACKs tell the prober that its own
  messages may be the ones going missing (Lifeguard's local health awareness).
* A forward: the indirect probe this member runs for a requester; it answers NACK after
  ``NACK_FRACTION`` of the probe timeout if the target stayed silent, and forwards the ack
  if it comes before the requester's interval ends.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from p2pagent.membership.members import Member, MemberTable

#: Fraction of the probe timeout an indirect prober waits before answering NACK.
NACK_FRACTION = 0.8
#: A tick that comes this fraction of the probe timeout after a probe's deadline means this
#: member was not running when it should have (see ``Probe.starved_for``).
LATE_FRACTION = 0.5


@dataclass(slots=True)
class Probe:
    seq: int
    target: str
    indirect_at: float
    end_at: float
    acked: bool = False
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0
    extended: bool = False

    def next_deadline(self) -> float:
        return self.end_at if self.indirect_sent or self.acked else self.indirect_at

    def starved_for(self, now: float, timeout: float) -> float:
        """Seconds to add to the probe's deadlines when this tick came late enough to matter
        and the probe was not extended yet; else 0.

        The driver ticks at the deadline; a tick well after it means this member's own loop
        was starved (a busy CPU: 64 daemons starting on two cores). The target's ack may then
        be waiting unread behind this very tick, so judging now would suspect a member for our
        own slowness: the probe gets the time we lost and that fraction of a timeout more to
        read what waits, once (Lifeguard's "assume the problem may be me").

        It does not raise local health awareness by itself: awareness stretches every later
        probe of this member and falls by one per answered probe, so one starved tick would
        slow its probing for many intervals. On a busy machine every member's ticks run late
        now and then, and the mesh as a whole then probed a crashed member a few times more
        slowly than memberlist's model (issue 28: SIGKILL detection at N = 64 1.65-1.8x the
        model on a busy machine, 1.17x on a quiet one). If the extended probe still fails,
        its missing NACKs raise awareness as for any failed probe.
        """
        if self.extended or self.acked:
            return 0.0
        late = now - self.next_deadline()
        return late + LATE_FRACTION * timeout if late > LATE_FRACTION * timeout else 0.0

    def extend(self, by: float) -> None:
        self.indirect_at += by
        self.end_at += by
        self.extended = True

    def awareness_penalty(self) -> int:
        """How much a failed probe raises local health awareness: one per helper whose NACK
        never came (our messages may be the ones lost), or one when there were no helpers."""
        if self.expected_nacks > 0:
            return max(0, self.expected_nacks - self.nacks)
        return 1


@dataclass(slots=True)
class Forward:
    """An indirect probe this member runs on behalf of another."""

    requester_address: str
    requester_seq: int
    nack_at: float
    expires_at: float
    nacked: bool = False

    def next_deadline(self) -> float:
        return self.expires_at if self.nacked else self.nack_at


class Forwards:
    """The indirect probes in flight, by the sequence number of our ping to the target."""

    def __init__(self) -> None:
        self._by_seq: dict[int, Forward] = {}

    def add(self, seq: int, forward: Forward) -> None:
        self._by_seq[seq] = forward

    def pop(self, seq: int) -> Forward | None:
        """The forward our ping ``seq`` belongs to, if still running: its target answered."""
        return self._by_seq.pop(seq, None)

    def next_deadline(self) -> float:
        return min((f.next_deadline() for f in self._by_seq.values()), default=math.inf)

    def due_nacks(self, now: float) -> list[Forward]:
        """Forgets expired forwards; returns those whose NACK is due now, marked as sent."""
        due: list[Forward] = []
        for seq, f in list(self._by_seq.items()):
            if now >= f.expires_at:
                del self._by_seq[seq]
            elif not f.nacked and now >= f.nack_at:
                f.nacked = True
                due.append(f)
        return due


class ProbeOrder:
    """Whom to probe next: suspects due a last look first, then a shuffled round-robin."""

    def __init__(self) -> None:
        self._order: list[str] = []
        self._pos = 0
        self._last_looks: list[str] = []

    def look_again(self, name: str) -> None:
        """Puts a suspect before the round-robin (its early or last look, `suspicion`)."""
        self._last_looks.append(name)

    def next(self, table: MemberTable, rng: random.Random) -> Member | None:
        while self._last_looks:
            m = table.get(self._last_looks.pop(0))
            s = None if m is None else m.suspicion
            if m is not None and s is not None and (s.checking or s.looked_early):
                return m
        for _ in range(2):
            while self._pos < len(self._order):
                name = self._order[self._pos]
                self._pos += 1
                m = table.get(name)
                if m is not None and m.state.reachable and name != table.me.name:
                    return m
            if not table.peers:
                return None
            # A new round: every reachable member once, in a fresh random order.
            self._order = list(table.peers)
            rng.shuffle(self._order)
            self._pos = 0
        return None

"""One member's failure detector: its probes, the indirect probes it runs for others, and
Lifeguard's local health awareness that stretches them.

The SWIM core owns one `Prober` and asks it, every tick, to run the probe in flight; the
records it keeps (`probing`) say what it waits for. A probe that ends is handed back to the
core as a `ProbeEnd` (whom it probed, whether an answer came): what follows from that, a
suspicion or a death, is the core's membership rule, not the prober's. The prober only
keeps its own account: probes and failures counted, awareness lowered by a timely answer and
raised by the NACKs a failed probe never got.

Pure: no clock, no I/O; the core's random generator and outbox are shared, so that every
message leaves with its share of the piggyback queues.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pagent.membership import timing
from p2pagent.membership.config import MembershipConfig
from p2pagent.membership.members import Member, MemberTable
from p2pagent.membership.messages import Kind, Message, Send, Update
from p2pagent.membership.outbox import Outbox
from p2pagent.membership.probing import NACK_FRACTION, Forward, Forwards, Probe, ProbeOrder
from p2pagent.membership.suspicion import buddy

if TYPE_CHECKING:
    from p2pagent.membership.swim import Counters


@dataclass(frozen=True, slots=True)
class ProbeEnd:
    """A probe whose interval ended: its target, and whether it (or a helper) answered."""

    target: str
    acked: bool


class Prober:
    """Probes one member per probe interval (SWIM), indirectly when the direct ping goes
    unanswered, and forwards other members' indirect probes."""

    def __init__(
        self,
        members: MemberTable,
        out: Outbox,
        config: MembershipConfig,
        rng: random.Random,
        counters: Counters,
        now: float,
        jitter: float,
    ) -> None:
        self._members = members
        self._out = out
        self._config = config
        self._rng = rng
        self._counters = counters
        self._order = ProbeOrder()
        self._probe: Probe | None = None
        self._forwards = Forwards()
        self._seq = 0
        self._next_probe = now + config.probe_interval * jitter
        #: Lifeguard's local health awareness: probe interval and timeout (and the core's
        #: gossip interval) are stretched by 1 + it.
        self.awareness = 0

    def adjust_awareness(self, delta: int) -> None:
        self.awareness = min(self._config.awareness_max, max(0, self.awareness + delta))

    def look_again(self, name: str) -> None:
        """Probes the suspect ``name`` next, before the round-robin (`ProbeOrder`)."""
        self._order.look_again(name)

    def next_deadline(self, probing: bool) -> float:
        """When the prober next has something to do; ``probing``: this member still probes
        (a leaving one only finishes the indirect probes it runs for others)."""
        t = self._forwards.next_deadline()
        if probing:
            t = min(t, self._next_probe)
            if self._probe is not None:
                t = min(t, self._probe.next_deadline())
        return t

    def run_forwards(self, now: float, out: list[Send]) -> None:
        for f in self._forwards.due_nacks(now):
            out.append(self._out.to_requester(Kind.NACK, f.requester_address, f.requester_seq))

    def run(self, now: float, out: list[Send]) -> ProbeEnd | None:
        """Moves the probe in flight on and starts the next one when due; returns the probe
        that ended, if one did."""
        p = self._probe
        late = 0.0 if p is None else p.starved_for(now, self._config.probe_timeout)
        if p is not None and late:
            # We were starved, not (yet) the target: see Probe.starved_for. The extension is
            # the whole answer; awareness is left to the probe's outcome (see probing.py).
            p.extend(late)
            self._counters.late_ticks += 1
        if p is not None and not p.acked and not p.indirect_sent and now >= p.indirect_at:
            self._send_indirect(p, out)
        ended = None
        if p is not None and now >= p.end_at:
            ended = self._finish(p)
            self._probe = p = None
        if now >= self._next_probe:
            interval = timing.scaled(self._config.probe_interval, self.awareness)
            self._next_probe = now + interval
            if p is None:
                self._start(now, interval, out)
        return ended

    def on_ack(self, seq: int, out: list[Send]) -> None:
        p = self._probe
        if p is not None and seq == p.seq:
            if not p.acked:
                p.acked = True
                self.adjust_awareness(-1)
            return
        f = self._forwards.pop(seq)
        if f is not None:
            out.append(self._out.to_requester(Kind.ACK, f.requester_address, f.requester_seq))

    def on_nack(self, seq: int) -> None:
        if self._probe is not None and seq == self._probe.seq:
            self._probe.nacks += 1

    def forward(self, msg: Message, now: float, out: list[Send]) -> None:
        """Runs the indirect probe a PING_REQ asks for."""
        if not msg.target_address or msg.target == self._members.me.name:
            return
        self._seq += 1
        # The NACK's time is the configured timeout, not one scaled by our own awareness (as
        # memberlist's helpers do): the requester sent this at its own timeout and counts
        # NACKs at the end of its interval, so a helper whose awareness is 1 or more would
        # answer too late, and every requester that asked it would raise its awareness for
        # NACKs that were on their way; a busy mesh would spread its slowness that way.
        self._forwards.add(
            self._seq,
            Forward(
                msg.src_address,
                msg.seq,
                now + NACK_FRACTION * self._config.probe_timeout,
                now + self._config.probe_interval,
            ),
        )
        out.append(self._out.ping_for(self._seq, msg.target, msg.target_address))

    def _start(self, now: float, interval: float, out: list[Send]) -> None:
        target = self._order.next(self._members, self._rng)
        if target is None:
            return
        self._counters.probes += 1
        self._seq += 1
        timeout = timing.scaled(self._config.probe_timeout, self.awareness)
        self._probe = Probe(self._seq, target.name, now + timeout, now + interval)
        out.append(self._out.to_member(Kind.PING, target, seq=self._seq, first=self._buddy(target)))

    def _buddy(self, target: Member) -> list[Update]:
        return buddy(target.name, target.incarnation, target.state, self._members.me.name)

    def _send_indirect(self, p: Probe, out: list[Send]) -> None:
        p.indirect_sent = True
        target = self._members.get(p.target)
        if target is None or not target.state.reachable:
            return
        helpers = self._members.sample_peers(
            self._rng, self._config.indirect_checks, exclude=p.target
        )
        p.expected_nacks = len(helpers)
        # A second direct ping alongside the indirect ones (memberlist's TCP fallback ping):
        # one lost datagram should not be enough to start a suspicion. It carries the buddy
        # suspicion too: the first ping, and with it the news, may be the one that was lost.
        out.append(self._out.to_member(Kind.PING, target, seq=p.seq, first=self._buddy(target)))
        for h in helpers:
            out.append(
                self._out.to_member(
                    Kind.PING_REQ,
                    self._members[h],
                    seq=p.seq,
                    target=target.name,
                    target_address=target.address,
                )
            )

    def _finish(self, p: Probe) -> ProbeEnd:
        if not p.acked:
            self._counters.probe_failures += 1
            self.adjust_awareness(p.awareness_penalty())
        return ProbeEnd(p.target, p.acked)

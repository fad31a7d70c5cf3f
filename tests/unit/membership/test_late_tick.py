"""A member whose own tick comes late (its loop was starved) does not blame the probe target
for it: the probe gets the lost time once. Its awareness is left to the probe's outcome: a
starved tick alone does not slow its later probes (it would slow detection mesh-wide)."""

from __future__ import annotations

import random

from p2pagent.membership.config import MembershipConfig
from p2pagent.membership.messages import Kind, Message, Send, State, Update
from p2pagent.membership.swim import Swim

CFG = MembershipConfig().validate()


def core() -> Swim:
    c = Swim("a", "a", CFG, random.Random(3), now=0.0)
    c.restore([Update(o, 1, State.ALIVE, o, o) for o in ("b", "c", "d")], 0.0)
    return c


def probe(c: Swim) -> tuple[float, Send]:
    t = c.next_deadline()
    for _ in range(20):
        for s in c.tick(t):
            if s.message.kind is Kind.PING:
                return t, s
        t = c.next_deadline()
    raise AssertionError("no probe sent")


def ack(ping: Send) -> Message:
    return Message(Kind.ACK, ping.message.target, ping.address, seq=ping.message.seq)


def test_a_late_tick_waits_for_the_ack_instead_of_suspecting() -> None:
    c = core()
    t, ping = probe(c)
    # Starved: the next tick comes 2 s after the probe's 0.5 s timeout.
    late = c.tick(t + CFG.probe_timeout + 2.0)
    assert [s for s in late if s.message.kind is Kind.PING_REQ] == []
    assert c.counters.late_ticks == 1
    assert c.awareness == 0, "a late tick alone must not stretch this member's probing"
    # The ack that sat unread behind that tick is taken, and nobody is suspected.
    c.handle(ack(ping), t + CFG.probe_timeout + 2.01)
    end = t + CFG.probe_timeout + 2.0 + CFG.probe_interval
    while c.next_deadline() <= end:
        c.tick(c.next_deadline())
    assert all(m.state == "alive" for m in c.members())
    assert c.awareness == 0
    assert c.next_deadline() <= end + CFG.probe_interval, "probing goes on at its base rate"


def test_a_target_that_stays_silent_is_still_suspected_after_the_extension() -> None:
    c = core()
    t, ping = probe(c)
    target = ping.message.target
    c.tick(t + CFG.probe_timeout + 2.0)
    sent: list[Send] = []
    end = t + CFG.probe_timeout + 2.0 + 2 * CFG.probe_interval
    while c.next_deadline() <= end:
        sent += c.tick(c.next_deadline())
    # Extended once only: the indirect probes went out, then the suspicion came.
    assert any(s.message.kind is Kind.PING_REQ and s.message.target == target for s in sent)
    assert c.state_of(target) is State.SUSPECT
    assert c.awareness > 0, "the failed probe's missing NACKs still count against us"


def test_ticks_on_time_judge_as_before() -> None:
    c = core()
    t, _ = probe(c)
    sent = c.tick(t + CFG.probe_timeout)
    assert any(s.message.kind is Kind.PING_REQ for s in sent)
    assert c.awareness == 0

"""An idle member wakes only for its probes: no gossip round without something to say."""

from __future__ import annotations

import random

from p2pagent.membership.config import MembershipConfig
from p2pagent.membership.messages import Kind, Message, State, Update
from p2pagent.membership.swim import Swim

CFG = MembershipConfig().validate()


def idle_wakes(c: Swim, until: float) -> tuple[int, int]:
    """(ticks, gossip messages) while every probe is answered at once."""
    ticks = gossips = 0
    while c.next_deadline() <= until:
        t = c.next_deadline()
        ticks += 1
        for s in c.tick(t):
            m = s.message
            if m.kind is Kind.PING:
                c.handle(Message(Kind.ACK, m.target, s.address, seq=m.seq), t)
            gossips += m.kind is Kind.GOSSIP
    return ticks, gossips


def test_an_idle_member_wakes_for_probes_only_and_news_goes_out_at_once() -> None:
    c = Swim("a", "a", CFG, random.Random(5), now=0.0)
    c.restore([Update(o, 1, State.ALIVE, o, o) for o in ("b", "c", "d", "e")], 0.0)
    ticks, gossips = idle_wakes(c, 60.0)
    # A probe costs a tick to send and one at its timeout; gossip rounds would add 5 a second.
    assert gossips == 0
    assert ticks <= 3 * 60 / CFG.probe_interval
    # News (a member we did not know) is gossiped without waiting for a round boundary.
    c.handle(
        Message(Kind.GOSSIP, "b", "b", updates=(Update("f", 1, State.ALIVE, "f", "f"),)), 60.05
    )
    assert c.next_deadline() <= 60.05
    assert any(s.message.kind is Kind.GOSSIP for s in c.tick(60.05))

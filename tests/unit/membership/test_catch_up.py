"""Catch-up after a mass join: a joiner push-pulls while its table grows, and a message from
an unknown member is answered with a push-pull (``membership/catch_up.py``)."""

from __future__ import annotations

import math
import random

import pytest

from p2pagent.membership.catch_up import (
    CATCH_UP_ROUNDS,
    UNKNOWN_SENDER_MEMORY,
    UNKNOWN_SENDER_QUIET_S,
    CatchUp,
    UnknownSenders,
)
from p2pagent.membership.config import MembershipConfig
from p2pagent.membership.messages import Kind, Message, Send, State, Update
from p2pagent.membership.swim import Swim
from p2pagent.sim.membership import MembershipScenario, simulate_mass_join

CFG = MembershipConfig().validate()


def core(name: str, *others: str) -> Swim:
    c = Swim(name, name, CFG, random.Random(1), now=0.0)
    c.restore([Update(o, 1, State.ALIVE, o, o) for o in others], 0.0)
    return c


def push_pulls(sends: list[Send]) -> list[str]:
    return [s.address for s in sends if s.message.kind is Kind.PUSH_PULL]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_64_members_joining_at_once_all_see_all_within_seconds_despite_loss(seed: int) -> None:
    # Without catch-up, 2 of 5 such runs left one member unaware of another for 12-20 s.
    r = simulate_mass_join(MembershipScenario(nodes=64, loss=0.05, seed=seed), 3.0, 60.0)
    assert r.seconds_to_full is not None and r.seconds_to_full <= 3.0
    assert r.false_positives == 0
    # A few exchanges each, not one per member.
    assert r.push_pulls_per_node <= 12


def test_a_lone_joiner_stops_catching_up_after_rounds_that_teach_nothing() -> None:
    seed = core("s", "b", "c")
    # No periodic push-pull within the window: every one counted is a catch-up.
    cfg = MembershipConfig(push_pull_interval=1000.0).validate()
    joiner = Swim("j", "j", cfg, random.Random(2), seeds=["s"], now=0.0)
    [join] = joiner.join(0.0)
    [reply] = seed.handle(join.message, 0.0)
    joiner.handle(reply.message, 0.01)
    assert {m.name for m in joiner.members()} == {"s", "b", "c", "j"}
    sent: list[str] = []
    t = 0.01
    while t < 60.0:
        t = max(t, joiner.next_deadline())
        for s in joiner.tick(t):
            m = s.message
            if m.kind is Kind.PING:  # every peer is alive and answers
                joiner.handle(Message(Kind.ACK, m.target, s.address, seq=m.seq), t)
            elif m.kind is Kind.PUSH_PULL:
                sent.append(s.address)
                # The peers know nobody new: the reply teaches nothing.
                table = tuple(
                    Update(v.name, v.incarnation, State(v.state), v.name, v.address)
                    for v in joiner.members()
                )
                joiner.handle(Message(Kind.PUSH_PULL_REPLY, s.address, s.address, members=table), t)
        t += 0.001
    assert len(sent) == CATCH_UP_ROUNDS
    assert set(sent) <= {"s", "b", "c"}
    assert all(v.state == "alive" for v in joiner.members())


def test_catch_up_backs_off_while_quiet_and_starts_again_on_news() -> None:
    c = CatchUp()
    assert not c.active and not c.due(100.0, 1.0)
    c.start(0.0, 1.0)
    assert not c.due(0.5, 1.0)
    assert c.due(1.0, 1.0) and c.next_at == 3.0  # quiet: the gap doubles
    assert c.due(3.0, 1.0) and c.next_at == 7.0
    c.learned()  # a new member: back to the short delay and a full count
    assert c.due(7.0, 1.0) and c.next_at == 8.0
    times = []
    while c.active:
        t = c.next_at
        if c.due(t, 1.0):
            times.append(t)
    assert len(times) == CATCH_UP_ROUNDS - 1
    assert c.next_at == math.inf and not c.due(1e6, 1.0)
    c.learned()  # done: news no longer re-arms it
    assert not c.active


def test_a_message_from_an_unknown_member_is_answered_with_one_push_pull() -> None:
    a = core("a", "b")
    ping = Message(Kind.PING, "x", "x-addr", seq=7, target="a")
    out = a.handle(ping, 1.0)
    assert [s.message.kind for s in out if s.address == "x-addr"] == [Kind.ACK, Kind.PUSH_PULL]
    # Again before the quiet time: only the ack.
    assert push_pulls(a.handle(ping, 2.0)) == []
    # Once its table arrived it is a member: no more push-pulls, whenever it writes.
    reply = Message(
        Kind.PUSH_PULL_REPLY, "x", "x-addr",
        members=(Update("x", 3, State.ALIVE, "x", "x-addr"), Update("a", 1, State.ALIVE, "a", "a")),
    )  # fmt: skip
    a.handle(reply, 2.1)
    assert a.state_of("x") is State.ALIVE
    assert push_pulls(a.handle(ping, 1.0 + UNKNOWN_SENDER_QUIET_S + 1)) == []
    # Known members never cause one.
    assert push_pulls(a.handle(Message(Kind.GOSSIP, "b", "b"), 3.0)) == []


def test_unknown_senders_are_rate_limited_per_address_and_bounded() -> None:
    u = UnknownSenders()
    assert u.should_ask("x", 0.0) and not u.should_ask("x", UNKNOWN_SENDER_QUIET_S - 0.1)
    assert u.should_ask("x", UNKNOWN_SENDER_QUIET_S)
    for i in range(UNKNOWN_SENDER_MEMORY - 1):
        assert u.should_ask(f"a{i}", 9.0)
    # Full of recent strangers: the next one waits for the periodic push-pull.
    assert not u.should_ask("late", 9.0)
    # Once they are old they are forgotten and room comes back.
    assert u.should_ask("late", 9.0 + UNKNOWN_SENDER_QUIET_S)

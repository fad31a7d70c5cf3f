"""Load hints in the pure SWIM core: spread, staleness, bad input, wire form."""

from __future__ import annotations

import math
import random

import pytest

from p2pagent.membership.codec import MalformedMessage, decode, encode
from p2pagent.membership.config import MembershipConfig
from p2pagent.membership.hints import (
    NOT_MEMBER,
    OUT_OF_RANGE,
    STALE,
    HintQueue,
    HintTable,
    LoadHint,
    QueuedWork,
    out_of_range,
)
from p2pagent.membership.messages import Kind, Message, Send, State, Update
from p2pagent.membership.swim import Swim

CFG = MembershipConfig(dead_reap_s=100.0).validate()


def hint(node: str = "a", seq: int = 1, backlog_s: float = 2.0, **kw: object) -> LoadHint:
    fields: dict[str, object] = {
        "queue_len": 10, "running": 1, "capacity": 1, "speed": 1.0, "models": ("m",),
        "queued": (QueuedWork("m", 10, 2.0),),
    }  # fmt: skip
    fields.update(kw)
    return LoadHint(node, seq, backlog_s, **fields)  # type: ignore[arg-type]


def mesh(n: int, seed: int = 1) -> dict[str, Swim]:
    names = [f"n{i}" for i in range(n)]
    cores = {}
    for i, name in enumerate(names):
        c = Swim(name, name, CFG, random.Random(seed * 1000 + i), now=0.0)
        c.restore([Update(o, 1, State.ALIVE, o, o) for o in names if o != name], 0.0)
        cores[name] = c
    return cores


def run(cores: dict[str, Swim], sends: list[Send], until: float, now: float = 0.0) -> int:
    """Delivers every message at once (no loss) and ticks each core at its deadlines until
    ``until``; returns the messages delivered."""
    delivered = 0
    pending = list(sends)
    while True:
        while pending:
            s = pending.pop(0)
            delivered += 1
            pending += cores[s.address].handle(s.message, now)
        due = min(c.next_deadline() for c in cores.values())
        if due > until:
            return delivered
        now = max(now, due)
        for c in cores.values():
            if c.next_deadline() <= now:
                pending += c.tick(now)


def test_table_refuses_non_members_out_of_range_and_stale_hints_and_counts_them() -> None:
    t = HintTable()
    assert not t.offer(hint("x"), is_member=False)
    bad = [
        hint(queue_len=-1),
        hint(backlog_s=math.nan),
        hint(backlog_s=math.inf),
        hint(backlog_s=-0.5),
        hint(speed=1e9),
        hint(speed=0.0),
        hint(capacity=0),
        hint(models=tuple(f"m{i}" for i in range(100))),
        hint(queued=(QueuedWork("m", 11, 2.0),)),  # more queued for m than in the queue
        hint(queued=(QueuedWork("m", 1, math.nan),)),
    ]
    for h in bad:
        assert out_of_range(h) is not None
        assert not t.offer(h, is_member=True)
    assert t.offer(hint(seq=5), is_member=True)
    assert not t.offer(hint(seq=5, backlog_s=9.0), is_member=True)  # not newer
    assert not t.offer(hint(seq=4), is_member=True)
    assert t.get("a") == hint(seq=5)
    assert t.rejected == {NOT_MEMBER: 1, OUT_OF_RANGE: len(bad), STALE: 2}
    assert t.accepted == 1


def test_queue_keeps_the_newest_per_node_and_retires_after_the_limit() -> None:
    q = HintQueue()
    q.put(hint("a", 1))
    q.put(hint("a", 2))
    q.put(hint("b", 1))
    assert len(q) == 2
    assert q.take(4, 2, skip="b") == [hint("a", 2)]  # b's own hint is not sent to b
    assert sorted(h.node for h in q.take(4, 2)) == ["a", "b"]
    assert [h.node for h in q.take(4, 2)] == ["b"]  # a was sent twice: retired
    assert not q


def test_a_published_hint_reaches_every_member_and_an_idle_mesh_sends_none() -> None:
    cores = mesh(12)
    # Idle: the mesh probes and gossips nothing but membership; no member knows any hint.
    run(cores, [], 5.0)
    assert all(not c.hints() for c in cores.values())
    sends = cores["n3"].publish_hint(hint("ignored", 99), 5.0, urgent=True)
    assert len(sends) == CFG.gossip_fanout  # urgent: a gossip round at once
    run(cores, sends, 8.0, now=5.0)
    for name, c in cores.items():
        [h] = c.hints()
        assert (h.node, h.seq, h.backlog_s) == ("n3", 1, 2.0)  # node and seq set by n3
        if name != "n3":
            assert c.take_hints() == [h]
    # A newer hint replaces it everywhere; the queues drain (bounded retransmissions).
    run(cores, cores["n3"].publish_hint(hint(backlog_s=0.0), 8.0), 12.0, now=8.0)
    assert {c.hints()[0].backlog_s for c in cores.values()} == {0.0}
    assert all(not c._out.hint_queue for c in cores.values())


def test_hints_about_unknown_or_dead_members_are_not_believed_and_death_forgets() -> None:
    cores = mesh(3)
    a = cores["n0"]
    msg = Message(Kind.GOSSIP, "n1", "n1", hints=(hint("stranger"), hint("n2")))
    a.handle(msg, 0.0)
    assert [h.node for h in a.hints()] == ["n2"]
    assert a.hints_rejected == {NOT_MEMBER: 1}
    a.handle(Message(Kind.GOSSIP, "n1", "n1", updates=(Update("n2", 1, State.DEAD, "n1"),)), 0.1)
    assert a.hints() == []  # a dead member's hint is forgotten...
    a.handle(Message(Kind.GOSSIP, "n1", "n1", hints=(hint("n2", 7),)), 0.2)
    assert a.hints() == [] and a.hints_rejected[NOT_MEMBER] == 2  # ...and not relearned
    a.handle(Message(Kind.GOSSIP, "n1", "n1", hints=(hint("n1", 3, speed=-1.0),)), 0.3)
    assert a.hints_rejected[OUT_OF_RANGE] == 1 and a.take_hints() == [hint("n2")]


def test_a_restarted_member_continues_above_its_previous_lives_hints() -> None:
    cores = mesh(2)
    a, b = cores["n0"], cores["n1"]
    b.handle(Message(Kind.GOSSIP, "n0", "n0", hints=(hint("n0", 40),)), 0.0)  # old life
    a.publish_hint(hint(backlog_s=1.0), 0.0)  # the new life's first hint is seq 1: stale
    [reply] = b.handle(Message(Kind.PUSH_PULL, "n0", "n0"), 0.1)
    a.handle(reply.message, 0.1)  # hears its old hint; says its load again, above it
    assert a.hints()[0].seq == 41 and a.hints()[0].backlog_s == 1.0
    run(cores, [], 2.0, now=0.1)
    assert [(h.seq, h.backlog_s) for h in b.hints()] == [(41, 1.0)]


def test_wire_form_round_trips_hints_and_reads_messages_without_them() -> None:
    msg = Message(Kind.PING, "a", "addr", seq=3, hints=(hint("a"), hint("b", 2, models=())))
    assert decode(encode(msg)) == msg
    plain = Message(Kind.ACK, "a", "addr", seq=3)
    assert decode(encode(plain)) == plain
    assert len(encode(plain)) < len(encode(msg))
    # A wrongly shaped hint is a malformed message; a wrong number is for the table to judge.
    nan = Message(Kind.GOSSIP, "a", "addr", hints=(hint(backlog_s=math.nan),))
    assert math.isnan(decode(encode(nan)).hints[0].backlog_s)
    import msgpack  # type: ignore[import-untyped]

    body = msgpack.unpackb(encode(msg))
    for broken in ([["a", 1]], [[1, 1, 1.0, 1, 1, 1, 1.0, [], []]], "x", [hint_row(seq=-1)]):
        with pytest.raises(MalformedMessage):
            decode(msgpack.packb([*body[:9], broken]))


def hint_row(seq: int) -> list[object]:
    return ["a", seq, 1.0, 1, 0, 1, 1.0, [], []]


def test_in_the_simulator_a_hint_reaches_100_members_within_seconds_despite_loss() -> None:
    from p2pagent.sim.membership import MembershipScenario, simulate_hint_spread

    idle = simulate_hint_spread(
        MembershipScenario(nodes=100, duration=8.0, join_at=100.0, loss=0.1), hint()
    )
    busy = simulate_hint_spread(
        MembershipScenario(nodes=100, duration=8.0, join_at=2.0, loss=0.1), hint()
    )
    assert idle.seconds_to_full is None  # never published
    assert busy.seconds_to_full is not None and busy.seconds_to_full < 3.0
    # One hint costs each member about retransmit_limit piggybacked copies (12 at N = 100,
    # some of them in gossip messages of their own): a couple of KB, not N messages.
    extra_per_member = (busy.bytes_per_node_per_s - idle.bytes_per_node_per_s) * 8.0
    assert 0 < extra_per_member < 2_000

"""Anti-entropy answers only what the asker lacks, every message under the size limit,
from the delta buffer when it covers the gap and from state slices otherwise."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pagent.state.codec import encode_message
from p2pagent.state.config import StateConfig
from p2pagent.state.messages import DeltaMessage, DigestMessage, Message
from p2pagent.state.replica import Replica

from .helpers import Mesh, wire

LIMIT = 16 * 1024


def _config(**kw: int) -> StateConfig:
    return StateConfig(max_message_bytes=LIMIT, max_key_bytes=256, **kw)


def _populate(r: Replica, keys: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    for i in range(keys):
        r.put_lww("ns", f"key{i:05d}", rng.randbytes(rng.randint(1, 600)), 1000.0 + i)
    # Overwrites and deletes leave dead dots the joiner must learn about too.
    for i in range(0, keys, 7):
        r.put_lww("ns", f"key{i:05d}", b"again", 5000.0 + i)
    for i in range(0, keys, 11):
        r.delete("ns", f"key{i:05d}")
    r.set_add("ns", "big-set", [rng.randbytes(400) for _ in range(200)])  # > LIMIT alone


def _catch_up(old: Replica, new: Replica) -> tuple[int, int]:
    """Runs digest rounds until ``new`` has everything; returns (messages, largest size)."""
    count = biggest = 0
    for _ in range(5):
        answers: list[Message] = old.answer_digest(wire(new.digest()))  # type: ignore[arg-type]
        if not answers:
            break
        for msg in answers:
            data = encode_message(msg)
            count += 1
            biggest = max(biggest, len(data))
            assert len(data) <= LIMIT
            new.handle(wire(msg), 9000.0)
    return count, biggest


def test_joiner_catches_up_without_any_message_over_the_limit() -> None:
    old = Replica("old", _config(delta_buffer_ops=10))  # buffer far too small: state slices
    _populate(old, 2000)
    new = Replica("new", _config())
    count, biggest = _catch_up(old, new)
    assert new.state_digest() == old.state_digest()
    assert new.state.context == old.state.context
    assert new.key_count == old.key_count > 1500
    assert count > 20  # the state really was split
    assert biggest > LIMIT // 2  # and the slices are reasonably full
    # A second round finds nothing to send.
    assert old.answer_digest(wire(new.digest())) == []  # type: ignore[arg-type]


def test_small_gap_is_answered_from_the_delta_buffer() -> None:
    a, b = Replica("a", _config()), Replica("b", _config())
    for r in (a, b):
        r.on_membership({"a", "b"})
    _populate(a, 300)
    _catch_up(a, b)
    a.put_lww("ns", "key00001", b"fresh", 9000.0)
    a.increment("ns", "ctr", 3)
    answers = a.answer_digest(wire(b.digest()))  # type: ignore[arg-type]
    assert len(answers) == 1
    msg = answers[0]
    assert isinstance(msg, DeltaMessage)
    assert [d.op is not None for d in msg.deltas] == [True, True]  # buffered op deltas
    b.handle(wire(msg), 9000.0)
    assert b.state_digest() == a.state_digest()


def test_buffer_evicted_falls_back_to_a_slice_of_only_the_gap() -> None:
    a = Replica("a", _config(delta_buffer_ops=3))
    b = Replica("b", _config())
    _populate(a, 200)
    _catch_up(a, b)
    for i in range(10):
        a.put_lww("ns", f"key{i:05d}", b"late", 9100.0 + i)
    answers = a.answer_digest(wire(b.digest()))  # type: ignore[arg-type]
    # A slice holding just the ten live dots of the gap is small.
    assert sum(len(encode_message(m)) for m in answers) < 2000
    for m in answers:
        b.handle(wire(m), 9200.0)
    assert b.state_digest() == a.state_digest()


def test_large_local_delta_is_split_for_gossip() -> None:
    a, b = Replica("a", _config()), Replica("b", _config())
    a.on_membership({"a", "b"})
    a.set_add(
        "ns", "s", [bytes([i]) * 300 + bytes(str(j), "ascii") for i in range(4) for j in range(100)]
    )
    outs = a.take_gossip(1.0)
    assert len(outs) > 1
    for out in outs:
        b.apply(wire(out.message, LIMIT), 1.0)
    assert b.get("ns", "s") == a.get("ns", "s")


def test_push_pull_repairs_both_sides_with_limits_under_loss() -> None:
    mesh = Mesh(5, seed=3, loss=0.3, duplicate=0.3, config=_config(delta_buffer_ops=50))
    rng = random.Random(2)
    names = sorted(mesh.replicas)
    for step in range(400):
        r = mesh.replicas[rng.choice(names)]
        key = f"k{rng.randrange(60)}"
        if rng.random() < 0.15:
            r.delete("ns", key)
        else:
            r.put_lww("ns", key, rng.randbytes(rng.randint(1, 900)), mesh.now + step)
        if step % 10 == 0:
            mesh.gossip()
            mesh.drain(steps=rng.randrange(30))
    mesh.gossip()
    mesh.drain()
    mesh.converge()
    assert mesh.max_seen <= LIMIT


def test_digest_from_an_equal_peer_gets_no_answer() -> None:
    a, b = Replica("a"), Replica("b")
    a.put_lww("ns", "k", b"v", 1.0)
    for m in a.answer_digest(wire(b.digest())):  # type: ignore[arg-type]
        b.handle(wire(m), 1.0)
    d = wire(b.digest())
    assert isinstance(d, DigestMessage)
    assert a.answer_digest(d) == []


def test_removal_lost_in_flight_is_repaired_by_the_live_summary() -> None:
    """Delta 2 (which overwrote dot 1) is lost; delta 3 names dot 2 in its context, so the
    receiver has 'seen' every dot yet still holds dot 1 beside dot 3. The digests' live hashes
    differ and the dead dots are sent. (Counters drop such a dot at once, see
    test_replica_ops; an LWW value keeps it as a hidden sibling until this repair.)"""
    a, b = Replica("a"), Replica("b")
    a.on_membership(["b"])
    sent = []
    for value in (b"1", b"2", b"3"):
        a.put_lww("ns", "k", value, 1.0)
        sent.append(a.take_gossip(1.0)[0].message)
    b.apply(wire(sent[0]), 1.0)
    b.apply(wire(sent[2]), 1.0)  # sent[1] is lost
    assert b.get("ns", "k").values == (b"3",)
    assert b.state.dot_count() == 2  # dot 1 still live beside dot 3
    for m in a.answer_digest(wire(b.digest())):  # type: ignore[arg-type]
        b.handle(wire(m), 2.0)
    assert b.state.dot_count() == 1 == a.state.dot_count()
    assert a.answer_digest(wire(b.digest())) == []  # type: ignore[arg-type]


@settings(max_examples=10, derandomize=True, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 300), st.integers(0, 3000), st.booleans()), max_size=300),
    st.integers(4 * 9000 // 1024, 40),
)
def test_any_state_syncs_in_messages_under_the_limit(
    ops: list[tuple[int, int, bool]], limit_kib: int
) -> None:
    limit = max(limit_kib * 1024, 4 * 5000)
    cfg = StateConfig(max_message_bytes=limit, max_key_bytes=256, delta_buffer_ops=5)
    old, new = Replica("old", cfg), Replica("new", cfg)
    for i, (key, size, delete) in enumerate(ops):
        if delete:
            old.delete("ns", f"k{key}")
        else:
            old.put_lww("ns", f"k{key}", bytes(size), float(i))
    for _ in range(3):
        for msg in old.answer_digest(wire(new.digest())):  # type: ignore[arg-type]
            new.handle(wire(msg, limit), 1.0)
    assert new.state_digest() == old.state_digest()

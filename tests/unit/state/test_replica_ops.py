"""Local operations of the replica: reads, type and size errors, scans and the change log."""

from __future__ import annotations

import random

import pytest

from p2pagent.errors import ConfigError, InvalidArgument
from p2pagent.state.clocks import (
    DotContext,
    HybridClock,
    Ordering,
    ranges_subtract,
    vv_compare,
)
from p2pagent.state.config import StateConfig
from p2pagent.state.crdt import Kind
from p2pagent.state.messages import DeltaMessage
from p2pagent.state.replica import Replica


def test_type_mismatch_names_the_key_and_the_problem() -> None:
    r = Replica("a")
    r.set_add("ns", "s", [b"x"])
    with pytest.raises(InvalidArgument, match=r"cannot increment at ns/s: it holds a SET value"):
        r.increment("ns", "s", 1)
    with pytest.raises(InvalidArgument, match="LWW"):
        r.put_lww("ns", "s", b"v", 1.0)
    r.delete("ns", "s")
    r.increment("ns", "s", 2)  # after a delete the key may change type
    assert r.get("ns", "s").kind is Kind.COUNTER


def test_value_limit() -> None:
    r = Replica("a", StateConfig(max_value_bytes=100))
    r.put_lww("ns", "k", b"x" * 100, 1.0)
    with pytest.raises(InvalidArgument, match="101 bytes, over the limit of 100"):
        r.put_lww("ns", "k", b"x" * 101, 1.0)
    with pytest.raises(InvalidArgument, match="over the limit"):
        r.set_add("ns", "s", [b"y" * 101])
    with pytest.raises(InvalidArgument, match="empty key"):
        r.put_mv("ns", "", b"v")


def test_default_value_limit_fits_one_message_and_config_is_checked() -> None:
    cfg = StateConfig()
    assert 1024 * 1024 - 16 * 1024 < cfg.value_limit() < cfg.max_message_bytes
    with pytest.raises(ConfigError, match="max_value_bytes"):
        StateConfig(max_value_bytes=cfg.max_message_bytes).validate()
    with pytest.raises(ConfigError, match="too small"):
        StateConfig(max_message_bytes=1000).validate()


def test_biggest_value_fits_in_one_message() -> None:
    from p2pagent.state.codec import encode_message

    cfg = StateConfig()
    r = Replica("a", cfg)
    r.on_membership(["b"])
    r.put_lww("n" * 1024, "k" * 1024, b"v" * cfg.value_limit(), 1.0)
    (out,) = r.take_gossip(1.0)
    assert len(encode_message(out.message)) <= cfg.max_message_bytes


def test_counter_and_reads() -> None:
    r = Replica("a")
    r.increment("ns", "c", 5)
    r.increment("ns", "c", -7)
    got = r.get("ns", "c")
    assert got.counter == -2 and got.version == {"a": 2}
    assert len(r.state.key("ns", "c").dots) == 1  # type: ignore[union-attr]
    assert not r.get("ns", "missing").found


def test_mv_write_with_stale_context_keeps_the_unseen_sibling() -> None:
    r = Replica("a")
    r.put_mv("ns", "m", b"1")
    seen = dict(r.get("ns", "m").version)
    other = Replica("b")
    other.put_mv("ns", "m", b"2")
    from p2pagent.state.messages import Delta, DeltaMessage

    r.apply(DeltaMessage("b", (Delta(other.state.copy()),)), 1.0)
    r.put_mv("ns", "m", b"3", seen)  # saw only "1"
    assert r.get("ns", "m").values == (b"2", b"3")


def test_scan_pages_in_key_order() -> None:
    r = Replica("a")
    keys = [f"p/{i:03d}" for i in range(25)]
    for k in random.Random(1).sample(keys, len(keys)):
        r.put_lww("ns", k, k.encode(), 1.0)
    r.put_lww("ns", "q", b"other prefix", 1.0)
    seen: list[str] = []
    after = ""
    while True:
        page = r.scan("ns", "p/", after, limit=10)
        seen += [k for k, _ in page.entries]
        if not page.next_after:
            break
        after = page.next_after
    assert seen == keys
    r.delete("ns", "p/003")
    r.put_lww("ns", "p/0035", b"new", 2.0)
    assert [k for k, _ in r.scan("ns", "p/00", "", 100).entries][:5] == [
        "p/000",
        "p/001",
        "p/002",
        "p/0035",
        "p/004",
    ]


def test_change_log_sequence_and_prefix() -> None:
    r = Replica("a", StateConfig(change_log_size=5))
    for i in range(8):
        r.put_lww("ns", f"x{i}", b"v", 1.0)
    changes, complete = r.changes_since(5, "ns", "x")
    assert [c.seq for c in changes] == [6, 7, 8] and complete
    _, complete = r.changes_since(1, "ns")
    assert not complete  # seq 2 fell out of the ring: the watcher must rescan
    r.delete("ns", "x7")
    last = r.changes_since(8, "ns")[0][-1]
    assert last.deleted and last.key == "x7" and last.seq == 9


def test_dot_context_matches_a_set_model() -> None:
    rng = random.Random(7)
    for _ in range(50):
        ctx, model = DotContext(), set()
        for _ in range(30):
            lo = rng.randint(1, 40)
            hi = lo + rng.randint(0, 5)
            ctx.add_range("o", lo, hi)
            model |= set(range(lo, hi + 1))
        assert {c for c in range(1, 60) if ctx.contains("o", c)} == model
        flat = {c for lo, hi in ctx.ranges("o") for c in range(lo, hi + 1)}
        assert flat == model
        other = DotContext.from_ranges({"o": [(5, 20)]})
        gap = ctx.missing_from(other).get("o", [])
        assert {c for lo, hi in gap for c in range(lo, hi + 1)} == model - set(range(5, 21))
    assert ranges_subtract([(1, 10)], [(3, 4), (8, 20)]) == [(1, 2), (5, 7)]


def test_hlc_is_monotonic_and_causal() -> None:
    clock = HybridClock()
    a = clock.tick(100.0)
    b = clock.tick(99.0)  # wall clock stepped back
    assert b > a
    clock.observe(b + 1000, 99.0)
    assert clock.tick(99.0) > b + 1000
    far = HybridClock(max_skew=1.0)
    far.observe(HybridClock().tick(1000.0), 10.0)  # a peer 990 s ahead is ignored
    assert far.tick(10.0) < HybridClock().tick(11.0)


def test_version_vector_order() -> None:
    assert vv_compare({"a": 1}, {"a": 1}) is Ordering.EQUAL
    assert vv_compare({"a": 1}, {"a": 2}) is Ordering.BEFORE
    assert vv_compare({"a": 2, "b": 1}, {"a": 2}) is Ordering.AFTER
    assert vv_compare({"a": 1}, {"b": 1}) is Ordering.CONCURRENT


def _increments(r: Replica, deltas: int) -> list[DeltaMessage]:
    out = []
    for _ in range(deltas):
        r.increment("ns", "n", 1)
        assert r.last_delta is not None
        out.append(DeltaMessage(r.node_id, (r.last_delta,)))
    return out


def test_a_lost_counter_delta_does_not_count_an_origin_twice() -> None:
    """Each increment's delta names only the dot it replaces: with the second of three lost,
    the first dot must still die when the third arrives (it did not: reads said 4, not 3)."""
    a, b = Replica("a"), Replica("b")
    d1, _lost, d3 = _increments(a, 3)
    b.apply(d1, 1.0)
    b.apply(d3, 2.0)
    assert b.get("ns", "n").counter == a.get("ns", "n").counter == 3


def test_a_late_counter_delta_does_not_come_back() -> None:
    """A delta delayed past a newer one of the same origin (a gap in the context) stays dead."""
    a, b = Replica("a"), Replica("b")
    d1, d2, d3 = _increments(a, 3)
    b.apply(d3, 1.0)
    b.apply(d1, 2.0)
    assert b.get("ns", "n").counter == 3
    b.apply(d2, 3.0)
    assert b.get("ns", "n").counter == 3
    assert b.state_digest() == a.state_digest()

"""Merge of every CRDT kind is a join: commutative, associative and idempotent.

Random operation histories on three replicas (with random partial syncs between them, so the
states are causally related in many ways) produce states and deltas; every join law is checked
on them, comparing canonical forms.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pagent.state.crdt import DotMap, Kind, join
from p2pagent.state.messages import Delta, DeltaMessage
from p2pagent.state.replica import Replica

SETTINGS = settings(
    max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
KEYS = ["a", "b"]
VALUES = [b"x", b"y", b"z"]


def _op(kind: Kind) -> st.SearchStrategy[tuple[Any, ...]]:
    key = st.sampled_from(KEYS)
    value = st.sampled_from(VALUES)
    who = st.integers(0, 2)
    common = [st.tuples(st.just("sync"), who, who), st.tuples(st.just("delete"), who, key)]
    if kind is Kind.LWW:
        ops = [st.tuples(st.just("lww"), who, key, value)]
    elif kind is Kind.MV:
        ops = [st.tuples(st.just("mv"), who, key, value, st.booleans())]
    elif kind is Kind.COUNTER:
        ops = [st.tuples(st.just("inc"), who, key, st.integers(-5, 5))]
    else:
        elems = st.sets(value, min_size=1, max_size=2)
        ops = [
            st.tuples(st.just("add"), who, key, elems),
            st.tuples(st.just("remove"), who, key, elems),
        ]
    return st.one_of(*ops, *common)


def run_history(ops: list[tuple[Any, ...]]) -> tuple[list[Replica], list[DotMap]]:
    replicas = [Replica(f"r{i}", rng=random.Random(i)) for i in range(3)]
    deltas: list[DotMap] = []
    now = 100.0
    for op in ops:
        now += 0.001
        r = replicas[op[1]]
        if op[0] == "sync":
            src = replicas[op[2]]
            r.apply(DeltaMessage(src.node_id, (Delta(src.state.copy()),)), now)
            continue
        before = len(r.buffer)
        if op[0] == "lww":
            r.put_lww("ns", op[2], op[3], now)
        elif op[0] == "mv":
            # Half the writes pass an explicit (possibly stale) context from another replica.
            ctx = dict(replicas[(op[1] + 1) % 3].get("ns", op[2]).version) if op[4] else None
            r.put_mv("ns", op[2], op[3], ctx)
        elif op[0] == "inc":
            r.increment("ns", op[2], op[3])
        elif op[0] == "add":
            r.set_add("ns", op[2], op[3])
        elif op[0] == "remove":
            r.set_remove("ns", op[2], op[3])
        else:
            r.delete("ns", op[2])
        if len(r.buffer) > before:
            deltas.append(r._pending[-1].state)
    return replicas, deltas


def check_laws(states: list[DotMap]) -> None:
    for a in states:
        assert join(a, a).canonical() == a.canonical()
        for b in states:
            assert join(a, b).canonical() == join(b, a).canonical()
            for c in states[:4]:
                left = join(join(a, b), c).canonical()
                right = join(a, join(b, c)).canonical()
                assert left == right


def _laws(kind: Kind, ops: list[tuple[Any, ...]]) -> None:
    replicas, deltas = run_history(ops)
    states = [r.state for r in replicas] + deltas[-3:]
    check_laws(states)
    # Joining every delta into an empty state yields what the replicas know together.
    everything = DotMap()
    for d in deltas:
        everything.merge(d)
    together = join(join(replicas[0].state, replicas[1].state), replicas[2].state)
    assert everything.canonical() == together.canonical()


@SETTINGS
@given(st.lists(_op(Kind.LWW), max_size=25))
def test_lww_join_laws(ops: list[tuple[Any, ...]]) -> None:
    _laws(Kind.LWW, ops)


@SETTINGS
@given(st.lists(_op(Kind.MV), max_size=25))
def test_mv_join_laws(ops: list[tuple[Any, ...]]) -> None:
    _laws(Kind.MV, ops)


@SETTINGS
@given(st.lists(_op(Kind.COUNTER), max_size=25))
def test_counter_join_laws(ops: list[tuple[Any, ...]]) -> None:
    _laws(Kind.COUNTER, ops)


@SETTINGS
@given(st.lists(_op(Kind.SET), max_size=25))
def test_set_join_laws(ops: list[tuple[Any, ...]]) -> None:
    _laws(Kind.SET, ops)


def test_join_is_not_trivially_equal() -> None:
    """Guards the law tests: different histories give different canonical states."""
    replicas, _ = run_history([("lww", 0, "a", b"x"), ("lww", 1, "a", b"y")])
    assert replicas[0].state.canonical() != replicas[1].state.canonical()
    merged = join(replicas[0].state, replicas[1].state)
    assert merged.canonical() != replicas[0].state.canonical()


def test_mixed_kinds_keep_both_and_read_the_higher_kind() -> None:
    a, b = Replica("a"), Replica("b")
    a.put_lww("ns", "k", b"v", 1.0)
    b.set_add("ns", "k", [b"e"])
    a.apply(DeltaMessage("b", (Delta(b.state.copy()),)), 2.0)
    b.apply(DeltaMessage("a", (Delta(a.state.copy()),)), 2.0)
    assert a.get("ns", "k") == b.get("ns", "k")
    assert a.get("ns", "k").kind is Kind.SET
    assert a.state_digest() == b.state_digest()
    # The next write of the visible kind replaces the hidden value of the other kind.
    a.set_add("ns", "k", [b"f"])
    assert a.state.key("ns", "k") is not None
    assert a.state.key("ns", "k").others is None  # type: ignore[union-attr]

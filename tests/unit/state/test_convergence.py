"""Random operation histories over several replicas, delivered with random delay,
duplication, reordering and loss, converge after anti-entropy — to the sequential model's
value where one exists."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pagent.errors import InvalidArgument
from p2pagent.state.crdt import Kind

from .helpers import Mesh

SETTINGS = settings(
    max_examples=25, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
KEYS = ["k0", "k1", "k2"]


def _history(kinds: list[str]) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    who = st.integers(0, 3)
    key = st.sampled_from(KEYS)
    ops: list[st.SearchStrategy[tuple[Any, ...]]] = [
        st.tuples(st.just("net"), st.integers(0, 8)),
    ]
    if "lww" in kinds:
        ops.append(st.tuples(st.just("lww"), who, key, st.binary(max_size=4)))
    if "inc" in kinds:
        ops.append(st.tuples(st.just("inc"), who, key, st.integers(-10, 10)))
    if "set" in kinds:
        elems = st.sets(st.sampled_from([b"a", b"b", b"c"]), min_size=1, max_size=2)
        ops += [
            st.tuples(st.just("add"), who, key, elems),
            st.tuples(st.just("remove"), who, key, elems),
        ]
    if "mv" in kinds:
        ops.append(st.tuples(st.just("mv"), who, key, st.binary(max_size=4)))
    if "delete" in kinds:
        ops.append(st.tuples(st.just("delete"), who, key))
    return st.lists(st.one_of(*ops), max_size=40)


def _run(ops: list[tuple[Any, ...]], seed: int, loss: float = 0.2) -> tuple[Mesh, dict[str, Any]]:
    mesh = Mesh(4, seed=seed, loss=loss, duplicate=0.2)
    names = sorted(mesh.replicas)
    model: dict[str, Any] = {"lww": {}, "inc": {}}
    for op in ops:
        mesh.now += 0.01
        if op[0] == "net":
            mesh.gossip()
            mesh.drain(steps=op[1])
            continue
        r = mesh.replicas[names[op[1]]]
        if op[0] == "lww":
            r.put_lww("ns", op[2], op[3], mesh.now)
            # The HLC timestamp just issued, with the origin as tie-break, orders LWW writes.
            ts = r.clock.last
            best = model["lww"].get(op[2])
            if best is None or (ts, r.origin) > best[0]:
                model["lww"][op[2]] = ((ts, r.origin), op[3])
        elif op[0] == "inc":
            r.increment("ns", op[2], op[3])
            model["inc"][op[2]] = model["inc"].get(op[2], 0) + op[3]
        elif op[0] == "add":
            r.set_add("ns", op[2], op[3])
        elif op[0] == "remove":
            r.set_remove("ns", op[2], op[3])
        elif op[0] == "mv":
            r.put_mv("ns", op[2], op[3])
        else:
            r.delete("ns", op[2])
    mesh.gossip()
    mesh.drain()
    mesh.converge()
    return mesh, model


@SETTINGS
@given(_history(["lww"]), st.integers(0, 1000))
def test_lww_converges_to_the_last_write(ops: list[tuple[Any, ...]], seed: int) -> None:
    mesh, model = _run(ops, seed)
    for r in mesh.replicas.values():
        for key in KEYS:
            got = r.get("ns", key)
            if key in model["lww"]:
                assert got.values == (model["lww"][key][1],)
            else:
                assert not got.found


@SETTINGS
@given(_history(["inc"]), st.integers(0, 1000))
def test_counter_converges_to_the_total(ops: list[tuple[Any, ...]], seed: int) -> None:
    mesh, model = _run(ops, seed)
    for r in mesh.replicas.values():
        for key in KEYS:
            assert r.get("ns", key).counter == model["inc"].get(key, 0)


@SETTINGS
@given(_history(["lww", "inc", "set", "mv", "delete"]), st.integers(0, 1000))
def test_mixed_history_converges(ops: list[tuple[Any, ...]], seed: int) -> None:
    # A write of another kind to an existing key raises InvalidArgument, as a client sees it.
    try:
        mesh, _ = _run(ops, seed, loss=0.3)
    except InvalidArgument as e:
        assert "delete the key first" in str(e)
        return
    assert len(mesh.digests()) == 1


@SETTINGS
@given(_history(["set"]), st.integers(0, 1000))
def test_set_converges(ops: list[tuple[Any, ...]], seed: int) -> None:
    mesh, _ = _run(ops, seed)
    assert len(mesh.digests()) == 1


def test_set_sequential_model_when_fully_synced() -> None:
    """With every op delivered before the next, the set behaves like a plain set."""
    mesh = Mesh(3, seed=1)
    names = sorted(mesh.replicas)
    model: set[bytes] = set()
    import random

    rng = random.Random(5)
    for _ in range(60):
        r = mesh.replicas[rng.choice(names)]
        elems = {rng.choice([b"a", b"b", b"c", b"d"])}
        if rng.random() < 0.5:
            r.set_add("ns", "s", elems)
            model |= elems
        else:
            r.set_remove("ns", "s", elems)
            model -= elems
        mesh.converge()
        for rep in mesh.replicas.values():
            assert set(rep.get("ns", "s").elements) == model


def test_add_wins_over_concurrent_remove() -> None:
    mesh = Mesh(2)
    a, b = mesh.replicas["n0"], mesh.replicas["n1"]
    a.set_add("ns", "s", [b"x"])
    mesh.converge()
    # Concurrently: a removes x, b adds x again (b's add has not seen a's remove).
    a.set_remove("ns", "s", [b"x"])
    b.set_add("ns", "s", [b"x"])
    mesh.converge()
    assert a.get("ns", "s").elements == (b"x",) == b.get("ns", "s").elements


def test_mv_keeps_concurrent_siblings_until_a_covering_write() -> None:
    mesh = Mesh(2)
    a, b = mesh.replicas["n0"], mesh.replicas["n1"]
    a.put_mv("ns", "m", b"1")
    b.put_mv("ns", "m", b"2")
    mesh.converge()
    read = a.get("ns", "m")
    assert read.kind is Kind.MV and read.values == (b"1", b"2")
    # A write with the read's context resolves both siblings.
    b.put_mv("ns", "m", b"3", dict(read.version))
    mesh.converge()
    assert a.get("ns", "m").values == (b"3",)


def test_concurrent_delete_and_write_keeps_the_write() -> None:
    mesh = Mesh(2)
    a, b = mesh.replicas["n0"], mesh.replicas["n1"]
    a.put_lww("ns", "k", b"old", mesh.now)
    mesh.converge()
    a.delete("ns", "k")
    b.put_lww("ns", "k", b"new", mesh.now)
    mesh.converge()
    assert a.get("ns", "k").values == (b"new",)
    a.delete("ns", "k")
    mesh.converge()
    assert not b.get("ns", "k").found
    # No tombstone: the key is gone from the map entirely.
    assert b.state.key("ns", "k") is None and b.key_count == 0

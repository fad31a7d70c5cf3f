"""Garbage collection: departed origins leave the version vectors once every live member has
seen their dots, deletes leave no tombstone, and nothing deleted ever comes back."""

from __future__ import annotations

from p2pagent.state.messages import Delta, DeltaMessage, RetiredMessage
from p2pagent.state.replica import Replica

from .helpers import Mesh, wire


def _exchange_digests(mesh: Mesh, names: list[str]) -> None:
    for a in names:
        for b in names:
            if a != b:
                mesh.send(a, b, mesh.replicas[a].digest(), lossy=False)
    mesh.drain(lossy=False)


def test_departed_origin_is_retired_and_its_late_messages_resurrect_nothing() -> None:
    mesh = Mesh(3)
    n0, n1, n2 = (mesh.replicas[f"n{i}"] for i in range(3))
    n2.put_lww("ns", "doomed", b"v", mesh.now)
    n2.put_lww("ns", "kept", b"k", mesh.now)
    stale = next(out.message for out in n2.take_gossip(mesh.now))  # held back: delivered late
    mesh.converge()
    n0.delete("ns", "doomed")
    mesh.converge()
    assert not n1.get("ns", "doomed").found

    live = ["n0", "n1"]
    n0.on_membership([*live, "n5"], departed=["n2"])
    assert n0.collect_garbage() == []  # n5 never sent a digest: keep everything
    for r in (n0, n1):
        r.on_membership(live, departed=["n2"])
    _exchange_digests(mesh, live)
    assert n0.collect_garbage() == ["n2"]
    assert n1.collect_garbage() == ["n2"]
    assert "n2" not in n0.digest().context and "n2" not in n1.digest().context
    assert n0.get("ns", "kept").values == (b"k",)  # its live data stays

    # The held-back delta of the departed node arrives now: nothing changes.
    before = n0.state_digest()
    assert n0.apply(wire(stale), mesh.now) == []
    assert n0.state_digest() == before
    assert not n0.get("ns", "doomed").found
    assert mesh.digests() >= {before}


def test_retired_origin_returns_when_its_node_writes_again() -> None:
    a = Replica("a")
    a.on_membership([], departed=["b"])
    b = Replica("b")
    b.put_lww("ns", "k", b"1", 1.0)
    a.apply(DeltaMessage("b", (Delta(b.state.copy()),)), 1.0)
    assert a.collect_garbage() == ["b"]
    b.put_lww("ns", "k", b"2", 2.0)  # a false alarm: b was alive after all
    a.apply(wire(DeltaMessage("b", (Delta(b.state.copy()),))), 2.0)
    assert a.get("ns", "k").values == (b"2",)
    assert a.digest().context["b"] == ((1, 2),)


def test_joiner_after_retirement_gets_the_data_then_adopts_the_retirement() -> None:
    mesh = Mesh(3)
    n0, n1, n2 = (mesh.replicas[f"n{i}"] for i in range(3))
    n2.put_lww("ns", "from-n2", b"x", mesh.now)
    mesh.converge()
    for r in (n0, n1):
        r.on_membership(["n0", "n1"], departed=["n2"])
    _exchange_digests(mesh, ["n0", "n1"])
    n0.collect_garbage()
    n1.collect_garbage()

    joiner = Replica("n9")
    mesh.replicas["n9"] = joiner
    for r in (n0, n1, joiner):
        r.on_membership(["n0", "n1", "n9"])
    for _ in range(3):
        _exchange_digests(mesh, ["n0", "n9"])
    assert joiner.get("ns", "from-n2").values == (b"x",)
    assert joiner.state.context.retired == {"n2": 1}
    # Once the retired sets agree, digests between them produce no traffic at all.
    assert n0.answer_digest(wire(joiner.digest())) == []  # type: ignore[arg-type]


def test_adopting_a_retirement_needs_every_dot() -> None:
    a = Replica("a")
    a.apply(RetiredMessage("z", {"gone": 5}), 1.0)
    assert a.state.context.retired == {}  # it has seen nothing of "gone": must not filter


def test_old_epoch_of_a_live_node_is_retired() -> None:
    mesh = Mesh(2)
    n0, n1 = mesh.replicas["n0"], mesh.replicas["n1"]
    n1.put_lww("ns", "k", b"v", mesh.now)
    mesh.converge()
    # n1 restarts after a crash: same node, new epoch, new origin.
    reborn = Replica("n1", epoch=1, state=n1.state.copy(), hlc=n1.clock.last)
    mesh.replicas["n1"] = reborn
    reborn.on_membership(["n0", "n1"])
    reborn.put_lww("ns", "k", b"w", mesh.now + 1)
    mesh.converge()
    _exchange_digests(mesh, ["n0", "n1"])
    assert n0.collect_garbage() == ["n1"]
    assert reborn.collect_garbage() == ["n1"]
    assert set(n0.digest().context) == {"n1/1"}
    assert n0.get("ns", "k").values == (b"w",)


def test_deletes_leave_no_tombstone_and_acknowledged_deltas_leave_the_buffer() -> None:
    mesh = Mesh(3)
    n0 = mesh.replicas["n0"]
    for i in range(50):
        n0.put_lww("ns", f"k{i}", b"v", mesh.now)
    for i in range(50):
        n0.delete("ns", f"k{i}")
    mesh.converge()
    for r in mesh.replicas.values():
        assert r.key_count == 0 and r.state.entries == {} and r.state.index == {}
        assert r.state.context.to_ranges() == {"n0": [(1, 100)]}  # one range, not 100 dots
    assert len(n0.buffer) == 100
    _exchange_digests(mesh, sorted(mesh.replicas))
    n0.collect_garbage()
    assert len(n0.buffer) == 0

"""Replication policy: K live holders chosen alike everywhere, re-replication, safe drops."""

from __future__ import annotations

from collections import Counter

from p2pagent.models.manifest import ALL, Replicas
from p2pagent.models.replication import (
    VersionInfo,
    plan_replication,
    rendezvous_targets,
    replication_targets,
)

NODES = [f"n{i}" for i in range(10)]


def ver(
    mid: str, replicas: Replicas = 3, holders: set[str] | None = None, version: int = 1,
    name: str = "m",
) -> VersionInfo:  # fmt: skip
    return VersionInfo(name, mid, version, replicas, frozenset(holders or ()))


def pullers(versions: list[VersionInfo], live: list[str], held: dict[str, set[str]]) -> set[str]:
    """Nodes whose plan says to pull the first version."""
    mid = versions[0].manifest_id
    return {n for n in live if mid in plan_replication(versions, live, n, held.get(n, set())).pull}


def test_exactly_k_targets_agreed_by_all() -> None:
    v = ver("a" * 64, replicas=3, holders={"n0"})
    targets = replication_targets(v, NODES)
    assert len(targets) == 3 and len(set(targets)) == 3
    assert set(targets) <= set(NODES)
    # Every node computes the same targets, whatever order it lists members in.
    assert replication_targets(v, list(reversed(NODES))) == targets
    views = {plan_replication([v], NODES, n, set()).targets[v.manifest_id] for n in NODES}
    assert views == {targets}
    assert pullers([v], NODES, {"n0": {v.manifest_id}}) == set(targets) - {"n0"}


def test_targets_spread_across_versions() -> None:
    load: Counter[str] = Counter()
    for k in range(200):
        load.update(rendezvous_targets(f"{k:064x}", NODES, 2))
    assert set(load) == set(NODES)
    assert max(load.values()) < 2 * min(load.values())


def test_all_means_every_live_member() -> None:
    v = ver("b" * 64, replicas=ALL)
    assert replication_targets(v, NODES) == tuple(sorted(NODES))
    assert pullers([v], NODES, {}) == set(NODES)


def test_k_larger_than_cluster() -> None:
    v = ver("c" * 64, replicas=5)
    assert set(replication_targets(v, ["x", "y"])) == {"x", "y"}


def test_rereplicates_after_a_death() -> None:
    mid = "d" * 64
    targets = replication_targets(ver(mid), NODES)
    dead = targets[0]
    live = [n for n in NODES if n != dead]
    v = ver(mid, holders=set(targets))
    after = replication_targets(v, live)
    assert len(after) == 3 and dead not in after
    assert set(targets[1:]) <= set(after)  # survivors stay: only the replacement moves
    (newcomer,) = set(after) - set(targets)
    held = {n: {mid} for n in targets}
    assert pullers([v], live, held) == {newcomer}


def test_join_moves_few_placements() -> None:
    moved = 0
    for k in range(100):
        before = set(rendezvous_targets(f"{k:064x}", NODES, 3))
        after = set(rendezvous_targets(f"{k:064x}", [*NODES, "new"], 3))
        moved += len(before - after)
        assert len(before - after) <= 1
    assert moved < 60  # about 3/11 of 100 expected


def test_holder_drops_only_once_targets_hold_it() -> None:
    mid = "e" * 64
    targets = replication_targets(ver(mid), NODES)
    publisher = next(n for n in NODES if n not in targets)
    partly = ver(mid, holders={publisher, targets[0]})
    assert plan_replication([partly], NODES, publisher, {mid}).drop == ()
    full = ver(mid, holders={publisher, *targets})
    assert plan_replication([full], NODES, publisher, {mid}).drop == (mid,)
    # A target never drops; neither does a node that is using the version.
    assert plan_replication([full], NODES, targets[0], {mid}).drop == ()
    assert plan_replication([full], NODES, publisher, {mid}, in_use={mid}).drop == ()


def test_superseded_version_dropped_after_new_one_replicated() -> None:
    old_mid, new_mid = "1" * 64, "2" * 64
    new_targets = replication_targets(ver(new_mid), NODES)
    me = new_targets[0]
    old = ver(old_mid, version=1, holders={me})
    new_partial = ver(new_mid, version=2, holders=set(new_targets[:1]))
    plan = plan_replication([old, new_partial], NODES, me, {old_mid, new_mid})
    assert plan.drop == ()
    assert old_mid not in plan.targets
    new_full = ver(new_mid, version=2, holders=set(new_targets))
    plan = plan_replication([old, new_full], NODES, me, {old_mid, new_mid})
    assert plan.drop == (old_mid,)
    # keep_versions=2 retains the old one too.
    plan = plan_replication([old, new_full], NODES, me, {old_mid, new_mid}, keep_versions=2)
    assert old_mid in plan.targets


def test_in_use_is_pulled_even_when_not_a_target() -> None:
    mid = "f" * 64
    targets = replication_targets(ver(mid), NODES)
    me = next(n for n in NODES if n not in targets)
    v = ver(mid, holders=set(targets))
    assert plan_replication([v], NODES, me, set()).pull == ()
    assert plan_replication([v], NODES, me, set(), in_use={mid}).pull == (mid,)


def test_partial_pull_continues_and_unknown_is_kept() -> None:
    mid = "9" * 64
    v = ver(mid, replicas=ALL, holders={"n1"})
    plan = plan_replication([v], NODES, "n0", set(), partial={mid, "0" * 64})
    assert plan.pull == (mid,)
    assert plan.unknown == ("0" * 64,)
    assert plan.drop == ()
    # A freshly restarted node with an empty view drops nothing.
    plan = plan_replication([], [], "n0", {mid})
    assert plan == plan_replication([], ["n0"], "n0", {mid})
    assert plan.drop == () and plan.unknown == (mid,)


def test_pull_order_most_at_risk_first() -> None:
    a = ver("a" * 64, replicas=ALL, holders={"n1", "n2"}, name="a")
    b = ver("b" * 64, replicas=ALL, holders={"n1"}, name="b")
    c = ver("c" * 64, replicas=ALL, holders={"n1"}, name="c", version=5)
    plan = plan_replication([a, b, c], NODES, "n0", set())
    assert plan.pull == (c.manifest_id, b.manifest_id, a.manifest_id)

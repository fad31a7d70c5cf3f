"""Membership with real daemons: join through a seed, crash detection, restart with a higher
incarnation, graceful leave, and a partition that heals by itself.

Waits are generous upper bounds (the machines running CI are shared and slow); the speed
targets are measured by ``bench/membership_cluster.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pagent.testing import netns
from p2pagent.testing.cluster import Cluster

pytestmark = pytest.mark.cluster
SETTLE_S = 60.0


def _all_alive(c: Cluster, names: list[str]) -> bool:
    return all(
        {n for n, (state, _) in c.members(o).items() if state == "alive"} >= set(names)
        for o in names
    )


@pytest.fixture(scope="module")
def five(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("members"), 5, use_netns=False) as c:
        c.start()
        yield c


def test_members_join_through_a_seed(five: Cluster) -> None:
    names = list(five.nodes)
    five.wait_for(lambda: _all_alive(five, names), SETTLE_S, "every node lists all as alive")
    resp = five.members("n5")
    assert set(resp) == set(names)


def test_member_tags_and_addresses_are_replicated(five: Cluster) -> None:
    from p2pagent._proto import agent_pb2

    resp = five.agent("n2").Members(agent_pb2.MembersRequest(), timeout=5)
    n4 = next(m for m in resp.members if m.name == "n4")
    assert n4.address == five.nodes["n4"].address
    assert n4.tags["address"] == five.nodes["n4"].address
    assert n4.tags["accelerator"] == "cpu"
    assert n4.tags["version"]


def test_a_killed_member_is_declared_dead_and_comes_back_with_a_higher_incarnation(
    five: Cluster,
) -> None:
    names = list(five.nodes)
    five.wait_for(lambda: _all_alive(five, names), SETTLE_S, "all alive before the crash")
    before = five.members("n1")["n4"][1]
    five.kill("n4")
    others = [n for n in names if n != "n4"]
    five.wait_for(lambda: five.all_see(others, "n4", "dead"), SETTLE_S, "n4 dead everywhere")
    five.restart("n4")
    five.wait_for(lambda: _all_alive(five, names), SETTLE_S, "n4 alive again everywhere")
    for o in others:
        assert five.members(o)["n4"][1] > before


def test_a_graceful_stop_is_seen_as_left_not_dead(five: Cluster) -> None:
    names = list(five.nodes)
    five.wait_for(lambda: _all_alive(five, names), SETTLE_S, "all alive before the stop")
    assert five.nodes["n5"].stop() == 0
    others = [n for n in names if n != "n5"]
    five.wait_for(lambda: five.all_see(others, "n5", "left"), SETTLE_S, "n5 left everywhere")
    five.nodes["n5"].start()
    five.wait_for(lambda: _all_alive(five, names), SETTLE_S, "n5 back")


@pytest.mark.skipif(not netns.available(), reason="partitions need root and ip netns")
def test_a_partition_heals_without_restarts(tmp_path: Path) -> None:
    with Cluster(tmp_path, 6, use_netns=True) as c:
        c.start()
        names = list(c.nodes)
        left, right = names[:3], names[3:]
        c.wait_for(lambda: _all_alive(c, names), SETTLE_S, "all alive before the partition")
        c.partition(left, right)
        c.wait_for(
            lambda: c.all_see(left, right[0], "dead") and c.all_see(right, left[0], "dead"),
            SETTLE_S,
            "each side declares the other dead",
        )
        c.heal()
        c.wait_for(lambda: _all_alive(c, names), SETTLE_S, "the halves find each other again")


def test_top_shows_every_member_and_skips_a_dead_one(five: Cluster) -> None:
    import json
    import subprocess
    import sys

    names = list(five.nodes)
    five.wait_for(lambda: _all_alive(five, names), SETTLE_S, "all alive before top")
    cmd = [sys.executable, "-m", "p2pagent.cli.ctl", "top", "--target", five.nodes["n1"].address,
           "--certs", str(five.certs)]  # fmt: skip
    r = subprocess.run([*cmd, "--once", "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(rows) == set(names)
    assert all(row["state"] == "alive" and row["device"] == "cpu" for row in rows.values())
    r = subprocess.run([*cmd, "--iterations", "2", "--interval", "0.2"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("NAME") == 2 and "TASKS_PER_S" in r.stdout

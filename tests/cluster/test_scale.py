"""A mesh of 32 real daemons started at once converges and then idles without false deaths.

Before load hints (issue 28), 32 idle daemons saturated a 2-core machine with load reports
and never converged: members declared each other dead by the hundred. Waits here are
generous upper bounds (shared CI machines); the speed and cost targets are measured by
``bench/scale.py``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from p2pagent.testing.cluster import Cluster

pytestmark = pytest.mark.cluster

NODES = 32
START_S = 300.0
CONVERGE_S = 300.0
IDLE_S = 30.0
#: How each daemon logs another member's death (membership/driver.py).
DEATH = re.compile(r"member (\S+) is dead \(")


def _views(c: Cluster, names: list[str]) -> dict[str, dict[str, str]]:
    return {o: {n: s for n, (s, _) in c.members(o, timeout=10.0).items()} for o in names}


def _converged(c: Cluster, names: list[str]) -> bool:
    return all(all(view.get(n) == "alive" for n in names) for view in _views(c, names).values())


def _deaths_since(c: Cluster, offsets: dict[str, int]) -> list[str]:
    found = []
    for name, d in c.nodes.items():
        with d.log_path.open("rb") as f:
            f.seek(offsets[name])
            text = f.read().decode(errors="replace")
        found += [f"{name} saw {m.group(1)} dead" for m in DEATH.finditer(text)]
    return found


def test_32_daemons_converge_and_idle_without_false_deaths(tmp_path: Path) -> None:
    with Cluster(tmp_path, NODES, use_netns=False) as c:
        names = list(c.nodes)
        c.start(wait=False)
        for name in names:
            c.nodes[name].wait_ready(timeout=START_S)
        c.wait_for(lambda: _converged(c, names), CONVERGE_S, "every member lists all alive", 1.0)
        offsets = {n: d.log_path.stat().st_size for n, d in c.nodes.items()}
        time.sleep(IDLE_S)
        assert _deaths_since(c, offsets) == []
        views = _views(c, names)
        assert all(set(v) == set(names) for v in views.values())
        not_alive = {(o, n, s) for o, v in views.items() for n, s in v.items() if s != "alive"}
        assert not_alive == set()
        assert all(d.running for d in c.nodes.values())

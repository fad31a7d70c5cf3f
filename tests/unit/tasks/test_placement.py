"""Placement policies: local, round robin, least loaded (two choices), work stealing."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from p2pagent.errors import ConfigError
from p2pagent.tasks.load import LoadReport
from p2pagent.tasks.placement import PLACEMENTS, make_placement
from p2pagent.tasks.spec import Task

TASK = Task("t", "a", "m", 1.0)


def rep(
    node: str, backlog: float = 0.0, models: tuple[str, ...] = ("m",), seq: int = 1
) -> LoadReport:
    return LoadReport(node, seq, backlog, 0, 0, 1, 1.0, frozenset(models))


def test_local_and_work_stealing_stay_here() -> None:
    peers = [rep("b"), rep("c")]
    for name in ("local", "work_stealing"):
        p = make_placement(name)
        assert p.name == name
        assert p.choose(TASK, rep("a", 100.0), peers, 0, random.Random(1)) == "a"


def test_round_robin_cycles_over_serving_nodes() -> None:
    p = make_placement("round_robin")
    peers = [rep("c"), rep("b"), rep("x", models=("other",))]
    got = [p.choose(TASK, rep("a"), peers, 0, random.Random(1)) for _ in range(6)]
    assert got == ["a", "b", "c", "a", "b", "c"]


def test_least_loaded_prefers_low_backlog_and_spreads_a_burst() -> None:
    p = make_placement("least_loaded")
    rng = random.Random(3)
    peers = [rep("b", 0.0), rep("c", 0.0), rep("d", 50.0)]
    got: Counter[str] = Counter()
    for i in range(60):
        # Our own backlog grows as we keep tasks; peers' reports do not change meanwhile.
        own = rep("a", backlog=got["a"] * 1.0, seq=i)
        got[p.choose(TASK, own, peers, 0, rng)] += 1
    assert got["d"] == 0
    assert min(got["a"], got["b"], got["c"]) >= 15  # the local bump spreads the burst


def test_least_loaded_tie_keeps_it_here() -> None:
    p = make_placement("least_loaded")
    assert p.choose(TASK, rep("a"), [rep("b")], 0, random.Random(0)) == "a"


def test_unknown_placement() -> None:
    assert set(PLACEMENTS) == {"local", "round_robin", "least_loaded", "work_stealing"}
    with pytest.raises(ConfigError, match="work_stealing"):
        make_placement("fastest")

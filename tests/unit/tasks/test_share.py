"""How much of a burst a node keeps and a thief takes while engines have not measured batching.

The source document's case: eight 200 ms tasks at one node of four. Started work cannot be
stolen, so the origin may start (to measure batching) only up to its share of what it holds;
a thief that started what it stole must not look empty and steal again; and a victim gives a
thief its share of the queue as it is now, among every peer that serves the model.
"""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.core import TaskNode
from p2pagent.tasks.effects import Effect, PublishHint, SendSteal, StartRun
from p2pagent.tasks.hinting import from_hint
from p2pagent.tasks.placement import make_placement
from p2pagent.tasks.queue import steal_share
from p2pagent.tasks.run_ahead import own_share_s
from p2pagent.tasks.spec import Task

MODEL = "m"


def node(name: str, *, capacity: int = 32, measured: bool = False) -> TaskNode:
    return TaskNode(
        name, TasksConfig(), placement=make_placement("work_stealing"), rng=random.Random(1),
        capacity=capacity, models=lambda: [MODEL], batching_measured=lambda model: measured,
    )  # fmt: skip


def task(i: int, origin: str = "o", cost: float = 0.2) -> Task:
    return Task(f"{origin}-t{i}", origin, MODEL, cost)


def starts(effects: list[Effect]) -> list[str]:
    return [e.task.task_id for e in effects if isinstance(e, StartRun)]


_SEQ = itertools.count(1)


def hear(listener: TaskNode, effects: list[Effect], now: float) -> None:
    """``listener`` hears the hints among ``effects``, numbered as membership numbers them."""
    for e in effects:
        if isinstance(e, PublishHint):
            listener.on_hint(from_hint(dataclasses.replace(e.hint, seq=next(_SEQ))), now)


def mesh(*nodes: TaskNode) -> None:
    """Every node hears every other's first hint (which says what it serves)."""
    first = {n.name: n.tick(0.0) for n in nodes}
    for n in nodes:
        for other, effects in first.items():
            if other != n.name:
                hear(n, effects, 0.0)


def test_own_share_keeps_what_cannot_move_and_splits_the_rest_by_speed() -> None:
    assert own_share_s(0.2, 1.4, 1.0, 3.0) == pytest.approx(0.4)  # 1.6 s among four
    assert own_share_s(0.6, 0.2, 1.0, 3.0) == pytest.approx(0.6)  # started work stays
    assert own_share_s(0.2, 1.4, 1.0, 0.0) == pytest.approx(1.6)  # alone: all of it


def test_the_origin_of_a_burst_starts_only_its_share_while_measuring_batching() -> None:
    o, *peers = node("o"), node("a"), node("b"), node("c")
    mesh(o, *peers)
    started = [s for i in range(8) for s in starts(o.submit(task(i), 0.01))]
    # Two of eight: its quarter. Three (the explore rule alone) made the burst run three
    # rounds of 200 ms on the origin while its peers ran one or two.
    assert started == ["o-t0", "o-t1"]


def test_alone_the_origin_still_starts_three_to_measure_batching() -> None:
    o = node("o")
    o.tick(0.0)
    started = [s for i in range(8) for s in starts(o.submit(task(i), 0.01))]
    assert len(started) == 3


def test_a_thief_that_started_what_it_stole_does_not_steal_again() -> None:
    o, t, *others = node("o"), node("t"), node("b"), node("c")
    mesh(o, t, *others)
    for i in range(8):
        o.submit(task(i), 0.01)
    hear(t, o.tick(0.02), 0.02)
    (steal,) = [e for e in t.tick(0.02) if isinstance(e, SendSteal)]
    granted, _ = o.on_steal_request("t", steal.max_tasks, steal.models, 1.0, 0.03)
    assert len(granted) == 2  # its quarter of the eight, two already started at the origin
    assert len(starts(t.on_steal_response("o", granted, 0.04))) == 2  # both, to measure
    # The second waits behind the first in the engine: the thief is not empty, and the
    # origin still claims stealable work, yet no steal goes out.
    assert o.queue.n_queued == 4
    assert not [e for e in t.tick(0.05) if isinstance(e, SendSteal)]
    assert t.next_deadline() is None or t.next_deadline() > 0.05  # type: ignore[operator]


def test_a_thief_running_one_long_task_asks_for_the_next_in_time() -> None:
    o, t = node("o", capacity=1), node("t", capacity=1)
    mesh(o, t)
    for i in range(8):
        o.submit(task(i, cost=1.0), 0.01)
    hear(t, o.tick(0.02), 0.02)
    (steal,) = [e for e in t.tick(0.02) if isinstance(e, SendSteal)]
    granted, _ = o.on_steal_request("t", steal.max_tasks, steal.models, 1.0, 0.03)
    assert len(starts(t.on_steal_response("o", granted, 0.04))) == 1
    # Its one task runs: the next steal goes out now, so the next task is here when it ends.
    later = 0.04 + TasksConfig().steal_backoff_base_s
    assert [e for e in t.tick(later) if isinstance(e, SendSteal)]


def test_a_victim_gives_each_thief_its_share_among_every_serving_peer() -> None:
    assert steal_share(6, 1.0, 1.0) == 3  # one thief: half
    assert steal_share(6, 1.0, 1.0, others_speed=2.0) == 2  # four nodes: a quarter, rounded up
    assert steal_share(1, 1.0, 1.0, others_speed=2.0) == 1  # a lone task may still move
    o, *peers = node("o", measured=True), node("a"), node("b"), node("c")
    mesh(o, *peers)
    for i in range(40):
        o.submit(task(i, cost=0.02), 0.01)
    queued = o.queue.n_queued
    granted, _ = o.on_steal_request("a", 64, [MODEL], 1.0, 0.02)
    assert len(granted) == -(-queued // 4)  # not half: b and c come for theirs too


def test_peers_quiet_for_long_still_count_for_the_share() -> None:
    o, *peers = node("o"), node("a"), node("b"), node("c")
    mesh(o, *peers)  # their only hints, at 0.0
    late = 10 * TasksConfig().report_max_age_s  # idle peers gossip once, then stay quiet
    started = [s for i in range(8) for s in starts(o.submit(task(i), late))]
    assert started == ["o-t0", "o-t1"]

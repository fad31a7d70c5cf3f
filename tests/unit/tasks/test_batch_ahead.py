"""Where no peer can steal a model's work, a node hands its engine a running batch and a full
one behind it, not only ``tasks.run_ahead_s`` (``tasks/run_ahead.py`` rule 2): texts of
~11 ms reached a CPU encoder ~9 at a time under 0.1 s, so it never saw a full batch. Where a
peer serving the model could steal, queued work stays queued for it as before."""

from __future__ import annotations

import dataclasses
import random

from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.core import TaskNode
from p2pagent.tasks.effects import Effect, PublishHint, StartRun
from p2pagent.tasks.hinting import from_hint
from p2pagent.tasks.placement import make_placement
from p2pagent.tasks.results import TaskResult
from p2pagent.tasks.run_ahead import batch_room
from p2pagent.tasks.spec import Task

TEXTS = "encoder"
OTHER = "other"
#: 20 rows of 30 ms: what the engine says a full batch of TEXTS sums to.
FULL_BATCH_S = 0.6


def node(
    name: str = "o",
    placement: str = "local",
    *,
    models: tuple[str, ...] = (TEXTS,),
    batched: tuple[str, ...] = (TEXTS,),
    full: float | None = FULL_BATCH_S,
) -> TaskNode:
    return TaskNode(
        name, TasksConfig(run_ahead_s=0.1), placement=make_placement(placement),
        rng=random.Random(1), capacity=100, models=lambda: list(models),
        full_batch_s=lambda model: full if model in batched else None,
    )  # fmt: skip


def text(i: int, model: str = TEXTS, origin: str = "o") -> Task:
    return Task(f"{origin}-{model}-{i}", origin, model, 0.03)


def started(effects: list[Effect]) -> int:
    return sum(isinstance(e, StartRun) for e in effects)


def submit_all(n: TaskNode, count: int, model: str = TEXTS) -> int:
    return sum(started(n.submit(text(i, model), 0.0)) for i in range(count))


def peer_heard(n: TaskNode, peer: str, models: tuple[str, ...]) -> None:
    """``n`` hears ``peer``'s first hint: it serves ``models`` (and so could steal them)."""
    other = node(peer, "work_stealing", models=models)
    for e in other.tick(0.0):
        if isinstance(e, PublishHint):
            n.on_hint(from_hint(dataclasses.replace(e.hint, seq=1)), 0.0)


def test_a_node_nobody_steals_from_starts_two_full_batches() -> None:
    n = node()
    assert submit_all(n, 60) == 40  # 2 x 0.6 s of 30 ms texts; run_ahead_s alone: 4
    assert n.running == 40 and n.queue.n_queued == 20
    # A batch finishing lets the next ones in, up to two batches again.
    effects: list[Effect] = []
    for i in range(20):
        effects += n.on_run_finished(text(i), TaskResult(text(i).task_id, 0, "o", True, ()), 0.1)
    assert started(effects) == 20 and n.running == 40 and n.queue.n_queued == 0


def test_without_a_measured_batch_the_run_ahead_alone_bounds_it() -> None:
    assert submit_all(node(full=None), 60) == 4  # started while under 0.1 s


def test_work_a_peer_could_steal_stays_queued_for_it() -> None:
    n = node(placement="work_stealing")
    peer_heard(n, "p", (TEXTS,))
    assert submit_all(n, 60) == 4  # run_ahead_s only: the rest is there to steal
    assert sum(1 for _ in n.queue.stealable(0.0)) == 56


def test_a_peer_serving_other_models_only_cannot_steal_these() -> None:
    n = node(placement="work_stealing")
    peer_heard(n, "p", (OTHER,))
    assert submit_all(n, 60) == 40


def test_placement_that_weighs_load_keeps_the_run_ahead() -> None:
    # Under least-loaded placement, started work would hide from the load placement weighs.
    assert submit_all(node(placement="least_loaded"), 60) == 4


def test_each_model_has_its_own_batches_ahead() -> None:
    n = node(models=(TEXTS, OTHER))
    assert submit_all(n, 45) == 40
    # Beyond run_ahead_s, a model without a measured batch waits (one always runs: not here).
    assert submit_all(n, 3, OTHER) == 0
    # Another model the engine batches is not held back by TEXTS' two batches (queued
    # TEXTS would hold it back: the queue starts tasks in order).
    m = node(models=(TEXTS, OTHER), batched=(TEXTS, OTHER))
    assert submit_all(m, 40) == 40
    assert submit_all(m, 45, OTHER) == 40


def test_infers_start_at_once_up_to_two_full_batches_where_nobody_steals() -> None:
    n = node()
    at_once = [n.start_now(text(i), 0.0) for i in range(45)]
    assert at_once.count(True) == 40 and not any(at_once[40:])
    s = node(placement="work_stealing")
    peer_heard(s, "p", (TEXTS,))
    assert [s.start_now(text(i), 0.0) for i in range(12)].count(True) == 4


def test_batch_room_counts_only_the_models_started_work() -> None:
    running = [text(i) for i in range(39)] + [text(i, OTHER) for i in range(50)]
    assert batch_room(running, TEXTS, FULL_BATCH_S)
    assert not batch_room([*running, text(99)], TEXTS, FULL_BATCH_S)
    assert not batch_room([], TEXTS, None) and not batch_room([], TEXTS, 0.0)

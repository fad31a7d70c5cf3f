"""The scheduler core alone: inputs with explicit times in, effects out. No clock, no I/O.

Two cores are joined by hand (what one emits is fed to the other), so each test reads as the
messages of a run: an idle node has nothing due; a burst is gossiped urgently and stolen; a
silent holder's task is re-queued at its lease's end; a result is sent again until
acknowledged; run-ahead caps what is started.
"""

from __future__ import annotations

import random

from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.core import TaskNode
from p2pagent.tasks.effects import (
    DeliverResult,
    Effect,
    JournalResult,
    PublishHint,
    SendComplete,
    SendReport,
    SendSteal,
    StartRun,
)
from p2pagent.tasks.hinting import from_hint
from p2pagent.tasks.placement import make_placement
from p2pagent.tasks.results import TaskResult
from p2pagent.tasks.spec import Task

MODEL = "m"


def node(name: str, placement: str = "work_stealing", **cfg: object) -> TaskNode:
    return TaskNode(
        name, TasksConfig(**cfg), placement=make_placement(placement),  # type: ignore[arg-type]
        rng=random.Random(1), capacity=1, models=lambda: [MODEL],
    )  # fmt: skip


def task(i: int, origin: str = "o", cost: float = 0.02) -> Task:
    return Task(f"{origin}-t{i}", origin, MODEL, cost)


def of(effects: list[Effect], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in effects if isinstance(e, kind)]


def ok(t: Task, executor: str) -> TaskResult:
    return TaskResult(t.task_id, t.attempt, executor, True, compute_s=t.est_cost_s)


def steal_one(o: TaskNode) -> Task:
    """Three tasks at ``o`` (the first runs); a thief ``t`` takes the coldest at 0.0."""
    for i in range(3):
        o.submit(task(i), 0.0)
    (granted,), _ = o.on_steal_request("t", 1, [MODEL], 1.0, 0.0)
    assert o.leases.where(granted.task_id).holder == "t"  # type: ignore[union-attr]
    return granted


def test_an_idle_node_has_nothing_due() -> None:
    o = node("o")
    assert o.next_deadline() == float("-inf")  # its first hint is due at once
    first = o.tick(0.0)
    assert of(first, PublishHint)  # a peer must learn once which models we serve
    assert o.next_deadline() is None
    assert o.tick(100.0) == []


def test_a_burst_is_gossiped_at_once_and_a_thief_steals_part_of_it() -> None:
    o, t = node("o"), node("t")
    o.tick(0.0), t.tick(0.0)
    effects = [e for i in range(40) for e in o.submit(task(i), 1.0)]
    assert len(of(effects, StartRun)) == 1  # capacity 1
    assert o.next_deadline() == float("-inf")  # worth robbing now: an urgent tick
    (hint,) = of(o.tick(1.0), PublishHint)
    assert hint.urgent
    t.on_hint(from_hint(hint.hint), 1.01)
    assert t.next_deadline() == float("-inf")
    (steal,) = of(t.tick(1.01), SendSteal)
    assert steal.victim == "o"
    granted, _ = o.on_steal_request("t", steal.max_tasks, steal.models, steal.thief_speed, 1.02)
    assert 0 < len(granted) <= steal.max_tasks
    assert all(o.leases.where(g.task_id).holder == "t" for g in granted)  # type: ignore[union-attr]
    started = of(t.on_steal_response("o", granted, 1.03), StartRun)
    assert [s.task.task_id for s in started] == [granted[0].task_id]
    assert t.stats.stolen_in == len(granted) == o.stats.stolen_out


def test_a_result_goes_to_its_origin_again_until_acknowledged() -> None:
    o, t = node("o"), node("t")
    (run,) = of(t.on_steal_response("o", [steal_one(o)], 0.0), StartRun)
    (sent,) = of(t.on_run_finished(run.task, ok(run.task, "t"), 0.5), SendComplete)
    assert sent.origin == "o" and t.unacked == 1
    t.tick(0.5)
    assert of(t.tick(0.5 + t.cfg.complete_retry_s), SendComplete)  # no answer: again
    accepted, effects = o.on_complete(sent.result, 1.0)
    assert accepted
    (journal,) = of(effects, JournalResult)
    assert of(o.on_journaled(journal.result.task_id, 1.1), DeliverResult)[0].result == sent.result
    t.on_complete_ack(sent.result.task_id, sent.result.attempt)
    assert t.unacked == 0
    again, effects = o.on_complete(sent.result, 2.0)  # a late retry: acknowledged, no delivery
    assert again and not of(effects, JournalResult)


def test_a_silent_holder_s_task_is_requeued_when_its_lease_ends() -> None:
    o = node("o")
    stolen = steal_one(o)
    o.tick(0.1)
    assert o.leases.where(stolen.task_id).holder == "t"  # type: ignore[union-attr]
    due = o.next_deadline()
    assert due is not None and due <= o.cfg.lease_s
    o.tick(o.cfg.lease_s + 0.1)
    back = o.leases.where(stolen.task_id)
    assert back is not None and back.holder == "o" and back.attempt == 1  # at the next attempt
    assert stolen.task_id in {t.task_id for t in o.queue.queued()}


def test_holders_report_to_origins_and_reports_renew_leases() -> None:
    o, t = node("o"), node("t")
    stolen = steal_one(o)
    t.on_steal_response("o", [stolen], 0.0)
    (report,) = of(t.tick(5.0), SendReport)
    assert report.peer == "o" and stolen.task_id in report.report.held
    o.on_load_report(report.report, 9.0)
    o.tick(11.0)  # past the first lease's end, but renewed at 9.0
    assert o.leases.where(stolen.task_id).holder == "t"  # type: ignore[union-attr]


def test_run_ahead_caps_the_work_started() -> None:
    n = TaskNode(
        "o", TasksConfig(run_ahead_s=0.1), placement=make_placement("local"),
        rng=random.Random(1), capacity=32, models=lambda: [MODEL],
    )  # fmt: skip
    started = [e for i in range(10) for e in of(n.submit(task(i, cost=0.03), 0.0), StartRun)]
    assert len(started) == 4  # 0.03 s each: started while under 0.1 s
    assert n.running == 4 and n.queue.n_queued == 6


def test_a_node_that_holds_nothing_of_others_reports_to_nobody() -> None:
    o = node("o")
    for i in range(5):
        o.submit(task(i), 0.0)
    assert not of(o.tick(0.0) + o.tick(1.0), SendReport)

"""TaskQueue: order, the cold end, what may never be stolen, the bound and deadlines."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pagent.errors import AlreadyExists, NotFound, ResourceExhausted
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.queue import EntryState, TaskQueue, steal_share, transfer_cost_s, worth_moving
from p2pagent.tasks.spec import Task


def task(i: int, prio: int = 0, cost: float = 1.0, origin: str = "a", **kw: object) -> Task:
    return Task(f"t{i}", origin, kw.pop("model", "m"), cost, priority=prio, **kw)  # type: ignore[arg-type]


def ids(tasks: object) -> list[str]:
    return [t.task_id for t in tasks]  # type: ignore[attr-defined]


def test_priority_then_fifo() -> None:
    q = TaskQueue("a")
    for i, prio in enumerate([0, 5, 0, 5, 1]):
        q.push(task(i, prio), now=0)
    order = []
    while (t := q.pop_for_execution()) is not None:
        order.append(t.task_id)
    assert order == ["t1", "t3", "t4", "t0", "t2"]
    assert q.n_running == 5 and q.n_queued == 0


def test_pop_respects_loaded_models() -> None:
    q = TaskQueue("a")
    q.push(task(0, model="x"), 0)
    q.push(task(1, model="y"), 0)
    popped = q.pop_for_execution(models={"y"})
    assert popped is not None and popped.task_id == "t1"
    assert q.pop_for_execution(models={"z"}) is None


def test_steal_takes_cold_end_up_to_half() -> None:
    q = TaskQueue("a")
    for i in range(10):
        q.push(task(i, prio=1 if i < 2 else 0), 0)
    taken = q.take_for_steal(100, [], 1.0, now=0)
    # Half of 10, from the cold end: lowest priority, newest first.
    assert ids(taken) == ["t9", "t8", "t7", "t6", "t5"]
    assert ids(q.queued()) == ["t0", "t1", "t2", "t3", "t4"]


def test_steal_respects_max_n_and_speed_share() -> None:
    q = TaskQueue("a")
    for i in range(12):
        q.push(task(i), 0)
    assert len(q.take_for_steal(2, [], 1.0, 0)) == 2
    # A thief a third of our speed gets a quarter of the 10 left, rounded up.
    assert len(q.take_for_steal(100, [], 1 / 3, 0)) == 3
    assert steal_share(1, 1.0, 1.0) == 1  # a lone waiting task may go to an idle node
    assert steal_share(0, 1.0, 1.0) == 0


def test_never_steal_running() -> None:
    q = TaskQueue("a")
    q.push(task(0), 0)
    q.push(task(1), 0)
    running = q.pop_for_execution()
    assert running is not None
    taken = q.take_for_steal(10, [], 1.0, 0)
    assert running.task_id not in ids(taken)
    assert q.state(running.task_id) is EntryState.RUNNING
    assert q.take_for_steal(10, [], 1.0, 0) == []


def test_never_steal_a_stolen_task_again() -> None:
    q = TaskQueue("b", TasksConfig(steal_foreign=True))
    q.push(task(0), 0, stolen=True)
    q.push(task(1), 0, stolen=True)
    assert q.take_for_steal(10, [], 1.0, 0) == []
    assert q.is_stolen("t0")


def test_foreign_tasks_stay_unless_configured() -> None:
    q = TaskQueue("b")
    for i in range(4):
        q.push(task(i, origin="a"), 0)  # assigned here by origin a
    assert q.take_for_steal(10, [], 1.0, 0) == []
    q.cfg = TasksConfig(steal_foreign=True)
    assert len(q.take_for_steal(10, [], 1.0, 0)) == 2


def test_steal_filters_models() -> None:
    q = TaskQueue("a")
    for i in range(4):
        q.push(task(i, model="x" if i % 2 else "y"), 0)
    taken = q.take_for_steal(10, ["x"], 1.0, 0)
    assert {t.model for t in taken} == {"x"} and taken


def test_steal_only_when_transfer_is_cheap() -> None:
    cfg = TasksConfig(bandwidth_bytes_per_s=1e6, transfer_latency_s=0.001, steal_cost_ratio=10)
    # 1 MB at 1 MB/s = ~1 s transfer: needs >= 10 s compute.
    big_input = task(0, cost=5.0, input_bytes=1_000_000)
    long_task = task(1, cost=20.0, input_bytes=1_000_000)
    assert transfer_cost_s(1_000_000, cfg) == pytest.approx(1.001)
    assert not worth_moving(big_input, 1.0, cfg)
    assert worth_moving(long_task, 1.0, cfg)
    assert not worth_moving(long_task, 4.0, cfg)  # a fast thief computes it in 5 s
    # ... unless it would wait here ten times as long as the move takes.
    assert not worth_moving(big_input, 1.0, cfg, wait_s=9.0)
    assert worth_moving(big_input, 1.0, cfg, wait_s=10.1)
    q = TaskQueue("a", cfg)
    for t in (big_input, task(2, cost=0.001), task(3, cost=0.5)):
        q.push(t, 0)
    # Cold end first: t3 waits 5.001 s behind the others (>= 10 ms to move), t2 waits 5 s;
    # big_input, at the head, waits nothing and its compute is under 10x its 1 s move.
    assert ids(q.take_for_steal(10, [], 1.0, 0)) == ["t3", "t2"]
    q = TaskQueue("a", cfg)
    for t in (long_task, big_input):
        q.push(t, 0)
    # Behind 20 s of work, big_input is worth the move; long_task is worth it by compute.
    assert ids(q.take_for_steal(10, [], 1.0, 0)) == ["t0"]  # half of two: one
    assert ids(q.take_for_steal(10, [], 1.0, 0)) == ["t1"]


def test_bound_and_duplicates() -> None:
    q = TaskQueue("a", TasksConfig(max_queued=2))
    q.push(task(0), 0)
    with pytest.raises(AlreadyExists):
        q.push(task(0), 0)
    q.push(task(1), 0)
    with pytest.raises(ResourceExhausted, match="max_queued"):
        q.push(task(2), 0)
    q.pop_for_execution()  # running tasks do not count against the bound
    q.push(task(2), 0)


def test_expire_everywhere() -> None:
    q = TaskQueue("a")
    q.push(task(0, deadline=5.0), 0)
    q.push(task(1, deadline=10.0), 0)
    q.push(task(2), 0)
    q.push(task(3, deadline=4.0, prio=9), 0)
    assert q.next_deadline() == 4.0
    assert q.pop_for_execution() is not None  # t3 runs
    assert q.expire(3.9) == []
    gone = q.expire(5.0)
    assert sorted((e.task.task_id, e.was_running) for e in gone) == [("t0", False), ("t3", True)]
    assert all(e.error_code == "DEADLINE_EXCEEDED" and "deadline" in e.error_message for e in gone)
    assert ids(q.queued()) == ["t1", "t2"] and q.n_running == 0
    # An expired task is not handed to a thief either: expire() owns it.
    assert ids(q.take_for_steal(10, [], 1.0, now=11.0)) == ["t2"]


def test_finish_and_remove() -> None:
    q = TaskQueue("a")
    q.push(task(0), 0)
    q.push(task(1), 0)
    with pytest.raises(NotFound):
        q.finish("t0")  # not running yet
    q.pop_for_execution()
    assert q.finish("t0").task_id == "t0"
    assert q.remove("t1") is not None and q.remove("t1") is None
    assert len(q) == 0 and q.queued_cost_s() == 0


def test_front_puts_a_requeued_task_ahead_of_its_priority() -> None:
    q = TaskQueue("a")
    q.push(task(0), 0)
    q.push(task(1), 0)
    q.push(task(2, prio=1), 0)
    q.push(task(3), 0, front=True)
    q.push(task(4), 0, front=True)
    assert ids(q.queued()) == ["t2", "t4", "t3", "t0", "t1"]


def test_stealable_view_matches_what_a_thief_can_get() -> None:
    q = TaskQueue("a")
    q.push(task(0), 0)
    q.push(task(1, origin="z"), 0)
    q.push(task(2), 0, stolen=True)
    assert ids(q.stealable(0)) == ["t0"]


@given(
    st.lists(
        st.tuples(st.sampled_from(["push", "pop", "steal", "remove", "expire"]),
                  st.integers(0, 30), st.floats(0.0, 5.0)),
        max_size=80,
    )
)  # fmt: skip
def test_queued_cost_is_the_sum_of_the_waiting_estimates(ops: list[tuple[str, int, float]]) -> None:
    q = TaskQueue("a")
    for op, i, cost in ops:
        if op == "push" and f"t{i}" not in q:
            q.push(task(i, cost=cost, deadline=10.0 if i % 5 == 0 else 0.0), now=0)
        elif op == "pop":
            q.pop_for_execution()
        elif op == "steal":
            q.take_for_steal(i % 4 + 1, [], 1.0, now=0)
        elif op == "remove":
            q.remove(f"t{i}")
        else:
            q.expire(now=cost * 4)
        assert q.queued_cost_s() == pytest.approx(sum(t.est_cost_s for t in q.queued()), abs=1e-9)

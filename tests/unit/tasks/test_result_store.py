"""The origin's result store and its Wait callers: each waiting task has its own wake-up, so a
change to one task never wakes the callers of another; a stored result, a lifecycle event or
forgetting the task wakes exactly that task's callers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from p2pagent._proto import agent_pb2
from p2pagent.errors import NotFound
from p2pagent.tasks.lifecycle import TaskEvent, TaskLifecycle, TaskState
from p2pagent.tasks.result_store import ResultStore
from p2pagent.tasks.results import TaskResult

QUEUED, RUNNING = agent_pb2.TaskEvent.KIND_QUEUED, agent_pb2.TaskEvent.KIND_RUNNING
DONE = agent_pb2.TaskEvent.KIND_DONE


class CountingLifecycle(TaskLifecycle):
    """Counts the reads a waiter makes each time it wakes, by task."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[str, int] = {}

    def events(self, task_id: str, after_seq: int = 0) -> list[TaskEvent]:
        self.reads[task_id] = self.reads.get(task_id, 0) + 1
        return super().events(task_id, after_seq)


def _done(task_id: str) -> TaskResult:
    return TaskResult(task_id, 1, "n1", True)


async def _settle() -> None:
    for _ in range(20):  # loop steps, not time: every wake-up here is a callback away
        await asyncio.sleep(0)


async def _next(events: AsyncIterator[agent_pb2.TaskEvent]) -> agent_pb2.TaskEvent:
    return await asyncio.wait_for(anext(events), 5)


async def test_a_change_to_one_task_does_not_wake_the_callers_of_another() -> None:
    store, life = ResultStore(), CountingLifecycle()
    for task_id in ("a", "b"):
        life.record(task_id, TaskState.QUEUED, "n1", 1, 0.0)
    a, b = store.follow("a", life, "n1"), store.follow("b", life, "n1")
    assert (await _next(a)).kind == QUEUED
    assert (await _next(b)).kind == QUEUED
    pending_a = asyncio.ensure_future(anext(a))
    await _settle()
    reads_a = life.reads["a"]
    assert store.waited_for == 2
    # b runs, then finishes: a's caller sleeps through both.
    life.record("b", TaskState.RUNNING, "n1", 1, 1.0)
    store.wake("b")
    assert (await _next(b)).kind == RUNNING
    life.record("b", TaskState.DONE, "n1", 1, 2.0)
    store["b"] = _done("b")
    assert (await _next(b)).kind == DONE
    await _settle()
    assert life.reads["a"] == reads_a and not pending_a.done()
    # Its own change wakes it.
    life.record("a", TaskState.RUNNING, "n1", 1, 3.0)
    store.wake("a")
    assert (await asyncio.wait_for(pending_a, 5)).kind == RUNNING
    store["a"] = _done("a")
    assert (await _next(a)).kind == DONE
    assert store.waited_for == 0  # nobody waits: nothing kept for them


async def test_every_caller_of_one_task_wakes_and_a_gone_caller_leaves_nothing_behind() -> None:
    store, life = ResultStore(), TaskLifecycle()
    life.record("t", TaskState.QUEUED, "n1", 1, 0.0)
    callers = [store.follow("t", life, "n1") for _ in range(3)]
    for events in callers:
        assert (await _next(events)).kind == QUEUED
    pending = [asyncio.ensure_future(anext(events)) for events in callers]
    await _settle()
    pending[0].cancel()  # this caller hung up while asleep
    await _settle()
    store["t"] = _done("t")
    for p in pending[1:]:
        assert (await asyncio.wait_for(p, 5)).kind == DONE
    assert store.waited_for == 0


async def test_a_forgotten_task_wakes_its_callers_with_not_found() -> None:
    store, life = ResultStore(), TaskLifecycle()
    life.record("t", TaskState.QUEUED, "n1", 1, 0.0)
    store.submitted_at["t"] = (0.0, "m")
    events = store.follow("t", life, "n1")
    assert (await _next(events)).kind == QUEUED
    pending = asyncio.ensure_future(anext(events))
    await _settle()
    life.forget("t")
    store.forget(("t",))
    with pytest.raises(NotFound, match=r"forgotten after tasks\.done_retention_s"):
        await asyncio.wait_for(pending, 5)
    assert "t" not in store.submitted_at and store.waited_for == 0


async def test_a_finished_task_is_its_result_alone() -> None:
    store, life = ResultStore(), TaskLifecycle()
    life.record("t", TaskState.QUEUED, "n1", 1, 0.0)
    store["t"] = _done("t")
    assert [e.kind async for e in store.follow("t", life, "n1")] == [DONE]
    assert store.get("t") == _done("t") and len(store) == 1

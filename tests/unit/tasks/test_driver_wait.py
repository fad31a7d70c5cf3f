"""The origin side of one node's task driver, in process, with a gated fake engine: what
``Wait`` streams (the current state, then each change, then the result), and the numbers a
submit or a steal must not carry. (What a dying journal writer leaves behind is in
tests/integration/test_task_journal_driver.py: those tests kill processes.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch

from p2pagent._proto import agent_pb2, peer_pb2
from p2pagent.errors import InvalidArgument, NotFound, Unavailable
from p2pagent.inference import tensors
from p2pagent.tasks.driver import TasksDriver
from p2pagent.tasks.spec import Task
from p2pagent.testing.engines import GatedEngine
from tests.unit.tasks.solo import solo_driver

DONE = agent_pb2.TaskEvent.KIND_DONE
FAILED = agent_pb2.TaskEvent.KIND_FAILED
RUNNING = agent_pb2.TaskEvent.KIND_RUNNING


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[tuple[TasksDriver, GatedEngine]]:
    engine = GatedEngine(0.01)
    d = solo_driver(engine, tmp_path, "double", capacity=1)
    await d.start()
    try:
        yield d, engine
    finally:
        engine.gate.set()
        await d.stop()


def _submit(value: float) -> agent_pb2.SubmitRequest:
    x = tensors.to_proto("x", torch.full((1, 2), value))
    return agent_pb2.SubmitRequest(model="double", inputs=[x])


async def _next(events: AsyncIterator[agent_pb2.TaskEvent]) -> agent_pb2.TaskEvent:
    return await asyncio.wait_for(anext(events), 5)


async def test_wait_sends_the_current_state_then_each_change_then_the_result(
    driver: tuple[TasksDriver, GatedEngine],
) -> None:
    d, engine = driver
    blocker = await d.submit(_submit(1.0))  # takes the one slot, held at the gate
    task_id = await d.submit(_submit(3.0))  # queued behind it
    events = d.wait(task_id)
    first = await _next(events)
    # Its current state, not its history (it has only been queued so far).
    assert first.kind == agent_pb2.TaskEvent.KIND_QUEUED and first.node == "solo"
    engine.gate.set()
    rest = [e async for e in events]
    kinds = [e.kind for e in rest]
    assert kinds[-1] == DONE and kinds.count(DONE) == 1
    assert set(kinds[:-1]) <= {RUNNING}
    (y,) = tensors.many_from_proto(rest[-1].outputs, 100).values()  # type: ignore[union-attr]
    assert torch.equal(y, torch.full((1, 2), 6.0))
    # A finished task's stream is its result alone, as often as it is asked for.
    for tid, expected in ((task_id, 6.0), (blocker, 2.0)):
        again = [e async for e in d.wait(tid)]
        assert [e.kind for e in again] == [DONE]
        (y,) = tensors.many_from_proto(again[0].outputs, 100).values()  # type: ignore[union-attr]
        assert torch.equal(y, torch.full((1, 2), expected))
    assert engine.finished == 2


async def test_a_waiter_that_comes_while_the_task_runs_sees_running_then_the_result(
    driver: tuple[TasksDriver, GatedEngine],
) -> None:
    d, engine = driver
    task_id = await d.submit(_submit(5.0))
    events = d.wait(task_id)
    first = await _next(events)
    assert first.kind == RUNNING and first.node == "solo"
    engine.gate.set()
    assert [e.kind for e in [e async for e in events]] == [DONE]


async def test_waiting_for_an_unknown_task_is_not_found(
    driver: tuple[TasksDriver, GatedEngine],
) -> None:
    d, _ = driver
    with pytest.raises(NotFound, match="no task 'solo-0123'"):
        await _next(d.wait("solo-0123"))


@pytest.mark.parametrize("deadline", [float("nan"), float("inf"), -1.0])
async def test_a_deadline_that_is_not_a_finite_number_of_seconds_is_refused(
    driver: tuple[TasksDriver, GatedEngine], deadline: float
) -> None:
    d, _ = driver
    request = _submit(1.0)
    request.deadline_s = deadline
    with pytest.raises(InvalidArgument, match="deadline_s must be a finite number >= 0"):
        await d.submit(request)
    assert d.counters.submitted == 0 and len(d.leases) == 0  # nothing journaled or queued


@pytest.mark.parametrize("speed", [float("nan"), float("inf"), -2.0])
async def test_a_steal_with_a_bad_thief_speed_is_refused(
    driver: tuple[TasksDriver, GatedEngine], speed: float
) -> None:
    d, _ = driver
    await d.submit(_submit(1.0))
    req = peer_pb2.StealRequest(thief="n2", max_tasks=4, models=["double"], thief_speed=speed)
    with pytest.raises(InvalidArgument, match="thief_speed must be finite and >= 0"):
        d.handle_steal(req, "n2")


def test_a_task_with_a_non_finite_cost_or_deadline_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="must be finite"):
        Task("t1", "a", "m", float("inf"))
    with pytest.raises(InvalidArgument, match="must be finite"):
        Task("t1", "a", "m", 1.0, deadline=float("nan"))


async def test_the_tasks_api_refuses_calls_until_the_journal_is_read_back(tmp_path: Path) -> None:
    # The server takes calls before its components start: a Wait for a journaled task that
    # came in then was answered NOT_FOUND. It is UNAVAILABLE (retried) until the journal is in.
    from types import SimpleNamespace

    from p2pagent.api.tasks import TasksAgentApi

    api = TasksAgentApi()
    api._tasks_node = SimpleNamespace(tasks=solo_driver(GatedEngine(0.01), tmp_path, "double", 1))  # type: ignore[assignment]
    with pytest.raises(Unavailable, match="task journal is still loading"):
        api._tasks()
    await api._tasks_node.tasks.start()
    try:
        assert api._tasks() is api._tasks_node.tasks
    finally:
        await api._tasks_node.tasks.stop()


async def test_a_steal_that_arrives_too_late_for_its_answer_gets_nothing(
    driver: tuple[TasksDriver, GatedEngine],
) -> None:
    # The thief stops waiting at its deadline: tasks handed over after it would sit leased to
    # it, unrun, until their lease expired.
    d, _ = driver
    for i in range(4):
        await d.submit(_submit(float(i)))  # one runs (capacity 1, gated), three stay queued
    req = peer_pb2.StealRequest(thief="n2", max_tasks=2, models=["double"], thief_speed=1.0)
    late = d.handle_steal(req, "n2", time_left_s=0.05)
    assert list(late.tasks) == [] and d.core.stats.late_steals == 1 and d.queue.n_queued == 3
    on_time = d.handle_steal(req, "n2", time_left_s=0.9)
    assert len(on_time.tasks) >= 1 and d.queue.n_queued == 3 - len(on_time.tasks)

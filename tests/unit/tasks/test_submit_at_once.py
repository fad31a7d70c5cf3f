"""``SubmitAndWait`` of a short task that can start at once: run in the caller's coroutine and
journaled once finished, submission and result in one group; nothing shown or written
before. Anything else takes the scheduler's path. In-memory journal; no child process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from p2pagent._proto import agent_pb2
from p2pagent.errors import Unavailable
from p2pagent.inference import tensors
from p2pagent.tasks.driver import TasksDriver
from tests.unit.tasks.solo import JournaledDrivers, events_of

MODEL = "double"
OWNER = "spiffe://t/client/c"
DONE = agent_pb2.TaskEvent.KIND_DONE
FAILED = agent_pb2.TaskEvent.KIND_FAILED


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[JournaledDrivers]:
    drivers = JournaledDrivers(tmp_path, MODEL)
    yield drivers
    await drivers.stop()


def _request() -> tuple[agent_pb2.SubmitAndWaitRequest, dict[str, Any]]:
    x = tensors.to_proto("x", torch.ones(1, 2))
    request = agent_pb2.SubmitAndWaitRequest(model=MODEL, inputs=[x])
    return request, tensors.many_decode(request.inputs, 1 << 20)


async def _events(d: TasksDriver, decoded: bool = True) -> list[agent_pb2.TaskEvent]:
    request, inputs = _request()
    return await events_of(await d.submit_and_wait(request, inputs if decoded else None, OWNER))


async def _until(check: Callable[[], object]) -> None:
    for _ in range(10_000):  # loop steps, not time: nothing here waits on a clock
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def _values(event: agent_pb2.TaskEvent) -> list[float]:
    (out,) = event.outputs
    return [float(v) for v in tensors.from_proto(out, 1 << 20).flatten()]


async def test_a_short_task_runs_at_once_and_is_journaled_whole_in_one_group(
    make: JournaledDrivers,
) -> None:
    d, _, journal = await make()
    before = journal.groups
    events = await asyncio.wait_for(_events(d), 10)
    # Its one event is its result: nothing was shown before it was durable.
    assert [e.kind for e in events] == [DONE] and _values(events[0]) == [2.0, 2.0]
    task_id = events[0].task_id
    assert journal.groups - before == 1
    row = journal.rows[task_id]
    assert row.result is not None and row.result.ok and row.finished is not None
    assert row.spec.model == MODEL and not row.spec.inputs  # nothing reads them any more
    # It never went through the lease table, and nothing of it is left running or counted.
    assert task_id not in d.leases.lifecycle and d.running == 0 and d.queue.n_queued == 0
    assert d.quotas.usage(OWNER) == (0, 0)
    # Served to Wait and listed like any other result.
    waited = [e async for e in d.wait(task_id)]
    assert [e.kind for e in waited] == [DONE] and waited[0].outputs == events[0].outputs
    listed = {t.task_id: t.state for t in d.list_tasks(10).tasks}
    assert listed == {task_id: "done"} and d.counters.submitted == 1


async def test_its_result_survives_a_restart(tmp_path: Path) -> None:
    drivers = JournaledDrivers(tmp_path, MODEL)
    d, _, journal = drivers.build()
    await d.start()
    try:
        (event,) = await asyncio.wait_for(_events(d), 10)
    finally:
        await d.stop()
    again, _, _ = drivers.build(journal=journal)
    await again.start()
    try:
        waited = [e async for e in again.wait(event.task_id)]
    finally:
        await again.stop()
    assert [e.kind for e in waited] == [DONE] and waited[0].outputs == event.outputs


async def test_a_caller_that_hangs_up_mid_run_leaves_nothing_behind(make: JournaledDrivers) -> None:
    d, engine, journal = await make()
    engine.gate.clear()
    call = asyncio.ensure_future(_events(d))
    await _until(lambda: d.running)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert journal.rows == {} and d.running == 0 and d.quotas.usage(OWNER) == (0, 0)
    engine.gate.set()
    # The slot is free again: the next task runs at once too.
    assert [e.kind for e in await asyncio.wait_for(_events(d), 10)] == [DONE]


async def test_a_caller_that_hangs_up_during_the_fsync_still_leaves_the_result(
    make: JournaledDrivers,
) -> None:
    d, _, journal = await make()
    journal.holding = True  # a slow fsync
    call = asyncio.ensure_future(_events(d))
    await _until(lambda: journal.rows)
    (task_id,) = journal.rows
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    journal.release()
    await asyncio.sleep(0)
    waited = [e async for e in d.wait(task_id)]  # durable: served to Wait all the same
    assert [e.kind for e in waited] == [DONE]


async def test_a_journal_that_refuses_the_write_fails_the_call_and_keeps_nothing(
    make: JournaledDrivers,
) -> None:
    d, _, journal = await make()
    journal.down = True
    with pytest.raises(Unavailable, match="could not journal the task"):
        await asyncio.wait_for(_events(d), 10)
    assert d.list_tasks(10).tasks == [] and d.quotas.usage(OWNER) == (0, 0)


async def test_a_retryable_failure_is_tried_again_through_the_scheduler(
    make: JournaledDrivers,
) -> None:
    d, engine, journal = await make()
    engine.fail = Unavailable("the worker restarted")
    events = await asyncio.wait_for(_events(d), 10)
    assert events[-1].kind == DONE and _values(events[-1]) == [2.0, 2.0]
    assert engine.started == 2 and events[-1].task_id in d.leases.lifecycle
    assert journal.rows[events[-1].task_id].result is not None


async def test_a_task_failing_for_good_is_journaled_failed(make: JournaledDrivers) -> None:
    d, engine, journal = await make()
    engine.fail = ValueError("bad model")
    (event,) = await asyncio.wait_for(_events(d), 10)
    assert event.kind == FAILED and event.error_code == "INTERNAL" and engine.started == 1
    row = journal.rows[event.task_id].result
    assert row is not None and not row.ok


@pytest.mark.parametrize("why", ["busy", "long", "not served here"])
async def test_other_tasks_take_the_scheduler_path(make: JournaledDrivers, why: str) -> None:
    d, engine, journal = await make(cost_s=1.0 if why == "long" else 0.0001)
    busy = None
    if why == "busy":  # capacity 1, and a task already runs
        engine.gate.clear()
        busy = asyncio.ensure_future(_events(d))
        await _until(lambda: d.running)
    call = asyncio.ensure_future(_events(d, decoded=why != "not served here"))
    await _until(lambda: len(d.leases))  # queued: in the lease table
    engine.gate.set()
    events = await asyncio.wait_for(call, 10)
    assert events[-1].kind == DONE and events[-1].task_id in d.leases.lifecycle
    assert journal.rows[events[-1].task_id].result is not None
    if busy is not None:
        await asyncio.wait_for(busy, 10)

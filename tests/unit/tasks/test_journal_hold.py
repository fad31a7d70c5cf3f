"""A submission whose caller waits for the result on the same call is held up to
``tasks.journal_hold_s`` and committed with its result in one group (one fsync) when the task
finishes meanwhile; nothing is shown before it is durable. In-memory journal counting its
groups; no child process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
import torch

from p2pagent._proto import agent_pb2
from p2pagent.errors import Unavailable
from p2pagent.inference import tensors
from p2pagent.tasks.driver import TasksDriver
from tests.unit.tasks.solo import Journaled, JournaledDrivers

MODEL = "double"
DONE = agent_pb2.TaskEvent.KIND_DONE


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Any]:
    drivers = JournaledDrivers(tmp_path, MODEL)

    def build(cost_s: float = 0.0001, hold_s: float = 0.5) -> Awaitable[Journaled]:
        return drivers(cost_s, hold_s, capacity=4)

    yield build
    await drivers.stop()


def _request() -> agent_pb2.SubmitAndWaitRequest:
    x = tensors.to_proto("x", torch.ones(1, 2))
    return agent_pb2.SubmitAndWaitRequest(model=MODEL, inputs=[x])


async def _final(d: TasksDriver, task_id: str) -> agent_pb2.TaskEvent:
    return [e async for e in d.wait(task_id)][-1]


async def test_a_short_task_commits_its_submission_and_result_in_one_group(make: Any) -> None:
    d, _, journal = await make()
    before = journal.groups
    task_id = await asyncio.wait_for(d.submit(_request(), with_result=True), 10)
    assert (await asyncio.wait_for(_final(d, task_id), 10)).kind == DONE
    assert journal.groups - before == 1
    assert journal.rows[task_id].result is not None
    # A plain Submit (its answer is the id alone) is never held: two groups.
    before = journal.groups
    task_id = await asyncio.wait_for(d.submit(_request()), 10)
    assert (await asyncio.wait_for(_final(d, task_id), 10)).kind == DONE
    assert journal.groups - before == 2


async def test_a_held_submission_is_sent_alone_when_the_task_takes_longer(make: Any) -> None:
    d, engine, journal = await make(hold_s=0.02)
    engine.gate.clear()
    submitting = asyncio.ensure_future(d.submit(_request(), with_result=True))
    await asyncio.sleep(0)
    assert journal.rows == {}  # held: not sent yet, and the caller has no id
    task_id = await asyncio.wait_for(submitting, 10)  # sent after hold_s, durable alone
    assert task_id in journal.rows and journal.rows[task_id].result is None
    engine.gate.set()
    assert (await asyncio.wait_for(_final(d, task_id), 10)).kind == DONE


async def test_a_task_estimated_above_the_hold_is_never_held(make: Any) -> None:
    d, engine, journal = await make(cost_s=1.0, hold_s=0.5)
    engine.gate.clear()
    submitting = asyncio.ensure_future(d.submit(_request(), with_result=True))
    task_id = await asyncio.wait_for(submitting, 10)  # durable while the task still runs
    assert journal.rows[task_id].result is None
    engine.gate.set()
    assert (await asyncio.wait_for(_final(d, task_id), 10)).kind == DONE


async def test_a_held_submission_the_journal_refuses_fails_its_task(make: Any) -> None:
    d, engine, journal = await make(hold_s=0.02)
    engine.gate.clear()
    submitting = asyncio.ensure_future(d.submit(_request(), with_result=True))
    await asyncio.sleep(0)
    journal.down = True  # when the hold ends
    with pytest.raises(Unavailable, match="could not journal the task"):
        await asyncio.wait_for(submitting, 10)
    journal.down = False
    engine.gate.set()
    await asyncio.sleep(0.05)
    assert len(d.leases) == 0 and d.queue.n_queued == 0 and d.running == 0
    assert journal.rows == {}


async def test_a_held_submission_is_committed_when_the_node_stops(tmp_path: Path) -> None:
    d, engine, journal = JournaledDrivers(tmp_path, MODEL).build(hold_s=0.9, capacity=4)
    await d.start()
    engine.gate.clear()
    submitting = asyncio.ensure_future(d.submit(_request(), with_result=True))
    await asyncio.sleep(0)
    assert journal.rows == {}
    engine.gate.set()
    await d.stop()  # stopping: the held submission is sent before the journal closes
    task_id = await asyncio.wait_for(submitting, 10)
    assert task_id in journal.rows

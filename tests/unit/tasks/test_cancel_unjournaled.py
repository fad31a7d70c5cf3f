"""A task cancelled by its client before it was journaled (``SubmitStream``: the client does
not know the id yet) is failed ``CANCELLED`` wherever it is, unless it already finished; the
failure is journaled after the submission like any result, so the client learns the id and
what the cancel did once the submission is durable. In-memory journal whose syncs the test
holds, fake clock: no child process, no sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import torch

from p2pagent._proto import agent_pb2
from p2pagent.inference import tensors
from p2pagent.membership.view import StaticDirectory
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.driver import TasksDriver
from p2pagent.testing.clock import FakeClock, settle
from p2pagent.testing.engines import GatedEngine
from p2pagent.testing.journal import MemoryJournal
from p2pagent.testing.peer_link import MemoryPeers
from p2pagent.transport.metrics import RpcMetrics

MODEL = "double"
Kind = agent_pb2.TaskEvent


@pytest.fixture
async def node() -> AsyncIterator[tuple[TasksDriver, GatedEngine, MemoryJournal]]:
    journal, engine = MemoryJournal(), GatedEngine()
    d = TasksDriver(
        "n1", TasksConfig(), capacity=1, engine=engine, models=lambda: [MODEL],
        data_dir=None, channels=None, members=StaticDirectory("n1"),  # type: ignore[arg-type]
        metrics=RpcMetrics(), peers=MemoryPeers().link("n1"), journal=journal, clock=FakeClock(),
    )  # fmt: skip
    await d.start()
    yield d, engine, journal
    engine.gate.set()
    await d.stop()


def _request() -> agent_pb2.SubmitStreamRequest:
    x = tensors.to_proto("x", torch.ones(1, 2))
    return agent_pb2.SubmitStreamRequest(model=MODEL, inputs=[x])


async def _final(d: TasksDriver, task_id: str) -> agent_pb2.TaskEvent:
    events = [e async for e in d.wait(task_id)]
    return events[-1]


async def test_a_running_and_a_queued_task_cancelled_before_journaled_fail_cancelled(
    node: tuple[TasksDriver, GatedEngine, MemoryJournal],
) -> None:
    d, engine, journal = node
    journal.holding = True
    running_id, running_sync = d.accept(_request())
    queued_id, queued_sync = d.accept(_request())
    await settle()
    assert engine.started == 1 and d.queue.n_queued == 1  # capacity 1
    d.cancel(running_id, "cancelled by the client")
    d.cancel(queued_id, "cancelled by the client")
    assert d.queue.n_queued == 0  # the queued copy is dropped: it never runs
    journal.release()
    await d.journaled(running_id, running_sync)
    await d.journaled(queued_id, queued_sync)
    for task_id in (running_id, queued_id):
        final = await asyncio.wait_for(_final(d, task_id), 10)
        assert (final.kind, final.error_code) == (Kind.KIND_FAILED, "CANCELLED")
        assert journal.rows[task_id].result is not None  # the failure is durable
    engine.gate.set()  # the running copy finishes: its result is ignored
    await settle()
    assert engine.started == 1
    final = await asyncio.wait_for(_final(d, running_id), 10)
    assert (final.kind, final.error_code) == (Kind.KIND_FAILED, "CANCELLED")


async def test_a_task_finished_before_the_cancel_stays_done(
    node: tuple[TasksDriver, GatedEngine, MemoryJournal],
) -> None:
    d, engine, journal = node
    engine.gate.set()
    journal.holding = True
    task_id, sync = d.accept(_request())
    await settle()  # it ran while its submission was syncing
    d.cancel(task_id, "cancelled by the client")
    journal.release()
    await d.journaled(task_id, sync)
    final = await asyncio.wait_for(_final(d, task_id), 10)
    assert final.kind == Kind.KIND_DONE
    (y,) = final.outputs
    assert tensors.from_proto(y, 1 << 20).tolist() == [[2.0, 2.0]]

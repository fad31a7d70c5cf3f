"""A held submission and its result reach the real journal writer in one piece and commit as
one group (one fsync). (Not held, they take two unless the writer happens to read both at
once: that case is the unit test's, on the in-memory journal.) Integration: the driver's
journal writer is a real child process writing SQLite with fsync."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
import torch

from p2pagent._proto import agent_pb2
from p2pagent.inference import tensors
from p2pagent.membership.view import StaticDirectory
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.driver import TasksDriver
from p2pagent.tasks.journal import TaskJournal
from p2pagent.tasks.results import TaskResult
from p2pagent.testing.peer_link import MemoryPeers
from p2pagent.transport.metrics import RpcMetrics
from tests.unit.tasks.solo import events_of

MODEL = "double"


class QuickEngine:
    """``x * 2`` at once, estimated at 0.1 ms a row (under the hold)."""

    def marginal_seconds_per_row(self, model: str) -> float | None:
        return 0.0001

    def marginal_seconds_per_token(self, model: str) -> float | None:
        return None

    def batching_measured(self, model: str) -> bool:
        return True

    def full_batch_s(self, model: str) -> float | None:
        return None

    async def infer(self, model: str, inputs: Any, deadline: float | None = None) -> Any:
        return {"y": inputs["x"].to_torch() * 2}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[TasksDriver, TaskJournal]]:
    cfg = TasksConfig(journal_hold_s=0.5)  # long: the result always comes first here
    journal = TaskJournal(tmp_path / "tasks.db", cfg)
    d = TasksDriver(
        "n1", cfg, capacity=4, engine=QuickEngine(), models=lambda: [MODEL],
        data_dir=tmp_path, channels=None, members=StaticDirectory("n1"),
        metrics=RpcMetrics(), peers=MemoryPeers().link("n1"), journal=journal,
    )  # fmt: skip
    await d.start()
    try:
        yield d, journal
    finally:
        await d.stop()


async def _done(d: TasksDriver, task_id: str) -> None:
    events = [e async for e in d.wait(task_id)]
    assert events[-1].kind == agent_pb2.TaskEvent.KIND_DONE


async def test_submission_and_result_commit_in_one_group(
    node: tuple[TasksDriver, TaskJournal],
) -> None:
    d, journal = node
    x = tensors.to_proto("x", torch.ones(1, 2))
    request = agent_pb2.SubmitAndWaitRequest(model=MODEL, inputs=[x])
    for _ in range(3):
        before = journal.groups_committed
        task_id = await asyncio.wait_for(d.submit(request, with_result=True), 30)
        await asyncio.wait_for(_done(d, task_id), 30)
        assert journal.groups_committed - before == 1


async def test_a_task_run_at_once_is_one_group_and_one_row_read_back_finished(
    node: tuple[TasksDriver, TaskJournal],
) -> None:
    from p2pagent.tasks.journal import read_rows

    d, journal = node
    x = tensors.to_proto("x", torch.ones(1, 2))
    request = agent_pb2.SubmitAndWaitRequest(model=MODEL, inputs=[x])
    decoded = tensors.many_decode(request.inputs, 1 << 20)
    before = journal.groups_committed
    calls = d.submit_and_wait(request, decoded, "spiffe://t/client/c")
    (event,) = await asyncio.wait_for(_collect(calls), 30)
    assert event.kind == agent_pb2.TaskEvent.KIND_DONE
    assert journal.groups_committed - before == 1
    # On disk (a reader beside the writer, as the next start reads it): finished, with its
    # result, and without its inputs.
    (row,) = [r for r in read_rows(journal.path) if r.spec.task_id == event.task_id]
    assert row.result is not None and list(row.result.outputs) == list(event.outputs)
    assert row.finished is not None and not row.spec.inputs


async def _collect(
    calls: Awaitable[TaskResult | AsyncIterator[agent_pb2.TaskEvent]],
) -> list[agent_pb2.TaskEvent]:
    return await events_of(await calls)

"""An ``Agent.Infer`` that can run at once skips the scheduler's queue, leases and placement
(``TaskNode.start_now``), yet counts as running work; one that cannot goes through the
scheduler as before (issue 26: "Infer that can run locally at once should not pay the
scheduler's full price")."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from p2pagent._proto import agent_pb2
from p2pagent.inference import tensors
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.core import TaskNode
from p2pagent.tasks.driver import TasksDriver
from p2pagent.tasks.effects import StartRun
from p2pagent.tasks.placement import make_placement
from p2pagent.tasks.spec import Task
from p2pagent.testing.engines import GatedEngine
from tests.unit.tasks.solo import solo_driver

MODEL = "m"


def node(placement: str = "work_stealing", capacity: int = 4) -> TaskNode:
    return TaskNode(
        "o", TasksConfig(run_ahead_s=0.1), placement=make_placement(placement),
        rng=random.Random(1), capacity=capacity, models=lambda: [MODEL],
    )  # fmt: skip


def task(i: int, cost: float = 0.03) -> Task:
    return Task(f"o-t{i}", "o", MODEL, cost)


def test_an_infer_starts_at_once_and_counts_as_running() -> None:
    n = node()
    assert n.start_now(task(0), 0.0)
    assert n.running == 1 and n.queue.n_queued == 0
    assert n.leases.where("o-t0") is None  # no lease: nothing to re-queue, nothing journaled
    report = n.report(0.0)  # peers and hints see the work
    assert report.running == 1 and report.backlog_s > 0
    n.on_now_finished("o-t0", 0.01)
    assert n.running == 0 and n.stats.completed == 1


def test_work_started_at_once_holds_back_queued_work_by_run_ahead() -> None:
    n = node()
    started = [n.start_now(task(i), 0.0) for i in range(5)]
    # 0.03 s each, started while under run_ahead_s (0.1 s): four; the fifth is submitted.
    assert started == [True, True, True, True, False]
    assert not [e for e in n.submit(task(4), 0.0) if isinstance(e, StartRun)]
    assert n.queue.n_queued == 1
    # One that ran at once finishing starts what waited behind it.
    effects = n.on_now_finished("o-t0", 0.01)
    assert [e.task.task_id for e in effects if isinstance(e, StartRun)] == ["o-t4"]


def test_a_batch_of_infers_finishing_together_starts_what_waited_in_one_look() -> None:
    n = node()
    assert all(n.start_now(task(i), 0.0) for i in range(4))
    n.submit(task(4), 0.0)
    n.submit(task(5), 0.0)  # 0.12 s started (run_ahead_s 0.1) and at capacity: both wait
    assert n.queue.n_queued == 2
    effects = n.on_now_finished_many(("o-t0", "o-t1", "o-t2", "o-unknown"), 0.01)
    assert [e.task.task_id for e in effects if isinstance(e, StartRun)] == ["o-t4", "o-t5"]
    assert n.running == 3 and n.stats.completed == 3  # the unknown id counts for nothing


def test_nothing_passes_queued_work() -> None:
    n = node(capacity=1)
    assert n.start_now(task(0), 0.0)
    n.submit(task(1), 0.0)  # waits: capacity 1
    n.on_now_finished("o-t0", 0.01)  # o-t1 starts
    n.submit(task(2), 0.01)  # queued behind o-t1
    assert n.queue.n_queued == 1
    assert not n.start_now(task(3), 0.02)  # it would pass o-t2


def test_placement_that_may_send_work_away_never_starts_at_once() -> None:
    for placement in ("least_loaded", "round_robin"):
        assert not node(placement).start_now(task(0), 0.0)


# ---- through the driver ------------------------------------------------------------------


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[tuple[TasksDriver, GatedEngine]]:
    engine = GatedEngine(0.03)
    d = solo_driver(engine, tmp_path, MODEL, capacity=32)
    await d.start()
    yield d, engine
    engine.gate.set()
    await d.stop()


def _infer(value: float) -> tuple[agent_pb2.InferRequest, Any]:
    x = tensors.to_proto("x", torch.full((1, 2), value))
    request = agent_pb2.InferRequest(model=MODEL, inputs=[x])
    return request, tensors.many_decode(request.inputs, 1 << 20)


async def test_infers_run_at_once_until_run_ahead_then_through_the_queue(
    driver: tuple[TasksDriver, GatedEngine],
) -> None:
    d, engine = driver
    calls = [asyncio.create_task(d.run_inline(*_infer(i), None)) for i in range(6)]
    await asyncio.sleep(0.05)
    # Four at once (0.03 s each under run_ahead_s 0.1 s), with no lease; two queued, leased.
    assert engine.started == 4
    assert d.core.running == 4 and d.queue.n_queued == 2
    assert len(d.leases) == 2
    engine.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*calls), 30)
    for i, result in enumerate(results):
        assert result.ok, result.error_message
        (y,) = result.outputs
        assert tensors.from_proto(y, 1 << 20).tolist() == [[2.0 * i, 2.0 * i]]
    assert d.core.running == 0 and engine.started == 6


async def test_a_caller_gone_cancels_its_engine_request_and_frees_its_slot(
    driver: tuple[TasksDriver, GatedEngine],
) -> None:
    d, engine = driver
    call = asyncio.create_task(d.run_inline(*_infer(1), None, owner="alice"))
    await asyncio.sleep(0.05)
    assert d.core.running == 1
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert engine.cancelled == 1
    assert d.core.running == 0
    engine.gate.set()
    result = await asyncio.wait_for(d.run_inline(*_infer(2), None, owner="alice"), 30)
    assert result.ok


async def test_streamed_infers_are_futures_at_once_or_queued_and_free_their_slots_together(
    driver: tuple[TasksDriver, GatedEngine],
) -> None:
    """``start_inline`` (InferStream) hands back the engine request's own task for an Infer
    the core starts at once, and a future of the queued task's result otherwise; the slots of
    those that ran at once are freed together once they finish, and their quotas too."""
    d, engine = driver
    calls = [d.start_inline(*_infer(i), None, owner="alice") for i in range(6)]
    assert [isinstance(c, asyncio.Task) for c in calls] == [True] * 4 + [False] * 2
    assert d.core.running == 4 and d.queue.n_queued == 2
    assert d.quotas.usage("alice")[0] == 6
    engine.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*calls), 30)
    for i, result in enumerate(results):
        assert result.ok, result.error_message
        (y,) = result.outputs
        assert tensors.from_proto(y, 1 << 20).tolist() == [[2.0 * i, 2.0 * i]]
    await asyncio.sleep(0.05)
    assert d.core.running == 0 and d.core.stats.completed == 6
    assert d.quotas.usage("alice") == (0, 0)


async def test_a_streamed_infer_cancelled_stops_at_once_or_drops_its_answer_when_queued(
    driver: tuple[TasksDriver, GatedEngine],
) -> None:
    d, engine = driver
    calls = [d.start_inline(*_infer(i), None, owner="alice") for i in range(5)]
    await asyncio.sleep(0.05)
    calls[0].cancel()  # ran at once: its engine request is cancelled, its slot freed
    calls[4].cancel()  # queued: the task keeps its course, its answer is dropped
    await asyncio.sleep(0.05)
    # The freed slot started the queued one, whose caller has gone: it runs on.
    assert engine.cancelled == 1 and engine.started == 5 and d.core.running == 4
    engine.gate.set()
    done = await asyncio.wait_for(asyncio.gather(*calls[1:4]), 30)
    assert all(r.ok for r in done)
    for _ in range(100):  # the queued one still runs to its end
        if engine.started == 5 and d.core.running == 0:
            break
        await asyncio.sleep(0.05)
    assert engine.started == 5 and d.core.running == 0
    assert d.quotas.usage("alice") == (0, 0)

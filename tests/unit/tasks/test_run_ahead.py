"""How many queued tasks a node hands its engine: ``tasks.run_ahead_s`` of estimated work,
one task at least, and three while the engine has not yet seen what batching saves (else a
model whose batches cost more than half the run-ahead only ever runs batches of one)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from p2pagent._proto import agent_pb2
from p2pagent.inference import tensors
from p2pagent.tasks.driver import TasksDriver
from tests.unit.tasks.solo import solo_driver


class SlowEngine:
    """A model estimated at 60 ms a row; runs nothing until ``gate`` is set."""

    def __init__(self, measured: bool) -> None:
        self.gate = asyncio.Event()
        self.measured = measured
        self.started = 0

    def marginal_seconds_per_row(self, model: str) -> float | None:
        return 0.06

    def marginal_seconds_per_token(self, model: str) -> float | None:
        return None  # a model without sequences: costed per row

    def batching_measured(self, model: str) -> bool:
        return self.measured

    def full_batch_s(self, model: str) -> float | None:
        return None

    async def infer(self, model: str, inputs: Any, deadline: float | None = None) -> Any:
        self.started += 1
        await self.gate.wait()
        return {"y": inputs["x"].to_torch()}


@pytest.fixture
async def make_driver(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[tuple[TasksDriver, SlowEngine]] = []

    async def make(measured: bool) -> tuple[TasksDriver, SlowEngine]:
        engine = SlowEngine(measured)
        d = solo_driver(engine, tmp_path / str(len(made)), "slow", capacity=32)
        await d.start()
        made.append((d, engine))
        return d, engine

    yield make
    for d, engine in made:
        engine.gate.set()
        await d.stop()


def _submit() -> agent_pb2.SubmitRequest:
    x = tensors.to_proto("x", torch.zeros(1, 2))
    return agent_pb2.SubmitRequest(model="slow", inputs=[x])


@pytest.mark.parametrize(("measured", "expected"), [(False, 3), (True, 2)])
async def test_tasks_started_ahead(make_driver: Any, measured: bool, expected: int) -> None:
    d, engine = await make_driver(measured)
    for _ in range(8):
        await d.submit(_submit())
    await asyncio.sleep(0.05)
    # Measured: 0.06 s each, started while under run_ahead_s (0.1 s): two. Not measured: three,
    # so the engine gets a batch of two behind the first and learns what a row adds.
    assert engine.started == expected
    assert d.core.running == expected

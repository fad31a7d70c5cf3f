"""A task's result over ``tasks.max_result_bytes`` fails where it ran (tasks/runs.py), in
words that name the setting, instead of being sent to an origin that refuses it undecoded."""

from __future__ import annotations

import asyncio
from typing import Any

import torch

from p2pagent._proto import common_pb2
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.runs import EngineRuns
from p2pagent.tasks.spec import Task


class _Engine:
    def __init__(self, rows: int) -> None:
        self.rows = rows

    def marginal_seconds_per_row(self, model: str) -> float | None:
        return None

    def marginal_seconds_per_token(self, model: str) -> float | None:
        return None  # a model without sequences: costed per row

    def batching_measured(self, model: str) -> bool:
        return False

    def full_batch_s(self, model: str) -> float | None:
        return None

    async def infer(self, model: str, inputs: Any, deadline: float | None = None) -> Any:
        return {"output": torch.zeros((self.rows, 4))}


def _task() -> Task:
    x = common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[1, 4], data=bytes(16))
    return Task(task_id="n1-0123456789abcdef", origin="n1", model="m", est_cost_s=0.01, inputs=(x,))


def test_a_result_within_the_bound_is_delivered_and_one_over_it_fails() -> None:
    cfg = TasksConfig(max_result_bytes=1600)
    ok = asyncio.run(EngineRuns("n1", cfg, _Engine(100)).run(_task()))  # 1,600 bytes
    assert ok.ok and len(ok.outputs) == 1
    over = asyncio.run(EngineRuns("n1", cfg, _Engine(101)).run(_task()))
    assert not over.ok and not over.outputs
    assert over.error_code == "INVALID_ARGUMENT"
    assert "1616 bytes" in over.error_message and "tasks.max_result_bytes" in over.error_message

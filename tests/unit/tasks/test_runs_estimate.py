"""A task's compute estimate (tasks/runs.py): by tokens for a model with sequences, so long
inputs weigh more than short ones with as many rows; by rows otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from p2pagent._proto import common_pb2
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.runs import DEFAULT_COST_S, EngineRuns


class _Engine:
    def __init__(self, per_row: float | None, per_token: float | None) -> None:
        self.per_row, self.per_token = per_row, per_token

    def marginal_seconds_per_row(self, model: str) -> float | None:
        return self.per_row

    def marginal_seconds_per_token(self, model: str) -> float | None:
        return self.per_token

    def batching_measured(self, model: str) -> bool:
        return True

    def full_batch_s(self, model: str) -> float | None:
        return None

    async def infer(self, model: str, inputs: Any, deadline: float | None = None) -> Any:
        raise AssertionError("not run")


def _ids(rows: int, length: int) -> common_pb2.Tensor:
    return common_pb2.Tensor(
        dtype=common_pb2.DTYPE_INT64, shape=[rows, length], data=bytes(8 * rows * length)
    )


def test_token_ids_are_estimated_by_their_tokens() -> None:
    runs = EngineRuns("n1", TasksConfig(), _Engine(per_row=0.05, per_token=0.001))
    short = runs.estimate("m", [_ids(2, 8), _ids(2, 8)])
    long = runs.estimate("m", [_ids(2, 128), _ids(2, 128)])
    assert short == pytest.approx(0.001 * 2 * 8)
    assert long == pytest.approx(0.001 * 2 * 128)


def test_a_model_without_sequences_is_estimated_by_rows() -> None:
    runs = EngineRuns("n1", TasksConfig(), _Engine(per_row=0.05, per_token=None))
    x = common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[3, 16], data=bytes(4 * 48))
    assert runs.estimate("m", [x]) == pytest.approx(0.15)


def test_an_unmeasured_model_gets_the_default() -> None:
    runs = EngineRuns("n1", TasksConfig(), _Engine(per_row=None, per_token=None))
    assert runs.estimate("m", [_ids(2, 8)]) == pytest.approx(DEFAULT_COST_S)

"""A stand-in for the inference engine as the tasks layer sees it, for tests of the scheduler.

``GatedEngine`` answers ``y = x * 2`` once its ``gate`` is set, so a test decides when work
finishes; it is estimated at ``cost_s`` a row (what placement and run-ahead read) and counts
what it started, finished and saw cancelled. ``fail`` makes the next run raise.
"""

from __future__ import annotations

import asyncio
from typing import Any


class GatedEngine:
    def __init__(self, cost_s: float = 0.02, *, opened: bool = False) -> None:
        self.gate = asyncio.Event()
        if opened:
            self.gate.set()
        self.cost_s = cost_s
        #: Raised by the next run (then cleared): a worker lost, a model that fails.
        self.fail: Exception | None = None
        self.started = 0
        self.finished = 0
        self.cancelled = 0

    def marginal_seconds_per_row(self, model: str) -> float | None:
        return self.cost_s

    def marginal_seconds_per_token(self, model: str) -> float | None:
        return None  # a model without sequences: costed per row

    def batching_measured(self, model: str) -> bool:
        return True

    def full_batch_s(self, model: str) -> float | None:
        return None

    async def infer(self, model: str, inputs: Any, deadline: float | None = None) -> Any:
        self.started += 1
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        self.finished += 1
        return {"y": inputs["x"].to_torch() * 2}

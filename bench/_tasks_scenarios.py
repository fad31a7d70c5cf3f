"""The task scenarios run both in the simulator (``bench.tasks_sim --shared``) and on real
daemons (``bench.tasks_cluster``), defined once so the two measure the same thing.

Four nodes; every task is submitted to one of them. A task is a number of input *rows*; a
row costs ``ms`` on a normal node (the cluster's ``busy`` model holds the worker that long per
row; the simulator runs it that long), twice that on a slow one.

* ``uniform``: ``tasks`` one-row tasks.
* ``skewed``: ``tasks // 4`` tasks of heavy-tailed size (Pareto, alpha 1.5, mean 4 rows,
  capped at 50x the mean); the fourth node is 2x slower.
* ``source``: the source document's case, 8 tasks of one row at ``10 * ms``.

The ideal makespan is the total work over the summed speeds (4, or 3.5 with a slow node).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SHARED = ("uniform", "skewed", "source")


@dataclass(frozen=True)
class Plan:
    name: str
    #: Rows of each task, in submission order.
    rows: list[int]
    ms_per_row: float
    #: The last node runs at half speed.
    slow: bool

    @property
    def costs_s(self) -> list[float]:
        return [r * self.ms_per_row / 1000 for r in self.rows]

    @property
    def speeds(self) -> list[float]:
        return [1.0, 1.0, 1.0, 0.5] if self.slow else [1.0] * 4

    @property
    def ideal_s(self) -> float:
        return sum(self.costs_s) / sum(self.speeds)


def pareto_sizes(n: int, mean: float, seed: int) -> list[int]:
    rng = random.Random(seed)
    alpha = 1.5
    xm = mean * (alpha - 1) / alpha
    return [max(1, round(min(rng.paretovariate(alpha) * xm, 50 * mean))) for _ in range(n)]


def plan(name: str, tasks: int = 400, ms: float = 20.0, seed: int = 1) -> Plan:
    if name == "uniform":
        return Plan(name, [1] * tasks, ms, False)
    if name == "skewed":
        return Plan(name, pareto_sizes(tasks // 4, 4.0, seed), ms, True)
    if name == "source":
        return Plan(name, [1] * 8, ms * 10, False)
    raise ValueError(f"unknown scenario {name!r}: one of {', '.join(SHARED)}")

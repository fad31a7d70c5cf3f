"""A closed-loop load generator for inference benchmarks, reusable over any transport.

``run_load(call, concurrency, requests)`` keeps ``concurrency`` calls in flight until
``requests`` have completed and returns per-request latencies and the throughput. ``call``
is a coroutine factory taking the request index, so the same generator drives the engine
in-process or a node over gRPC.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    latencies_s: tuple[float, ...]  # sorted, successful calls only

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return len(self.latencies_s) / self.wall_s if self.wall_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        i = min(len(self.latencies_s) - 1, max(0, round(q / 100 * len(self.latencies_s)) - 1))
        return self.latencies_s[i]

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p95(self) -> float:
        return self.percentile(95)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    def to_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "wall_s": self.wall_s,
            "throughput_rps": self.throughput,
            "p50_ms": self.p50 * 1e3,
            "p95_ms": self.p95 * 1e3,
            "p99_ms": self.p99 * 1e3,
        }


async def run_load(
    call: Callable[[int], Awaitable[Any]],
    concurrency: int,
    requests: int,
    *,
    warmup: int = 0,
) -> LoadResult:
    """Runs ``warmup`` untimed calls, then ``requests`` timed ones, ``concurrency`` at once."""
    counter = iter(range(warmup + requests))
    latencies: list[float] = []
    errors = 0

    async def worker(timed: bool, budget: int) -> None:
        nonlocal errors
        for _ in range(budget):
            i = next(counter, None)
            if i is None:
                return
            start = time.perf_counter()
            try:
                await call(i)
            except Exception:
                errors += timed
                continue
            if timed:
                latencies.append(time.perf_counter() - start)

    if warmup:
        await asyncio.gather(*(worker(False, warmup) for _ in range(concurrency)))
        counter = iter(range(requests))
    start = time.perf_counter()
    await asyncio.gather(*(worker(True, requests) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return LoadResult(concurrency, requests, errors, wall, tuple(sorted(latencies)))


def median_by_throughput(results: list[LoadResult]) -> LoadResult:
    """The run with the median throughput (robust against a noisy shared machine)."""
    ordered = sorted(results, key=lambda r: r.throughput)
    return ordered[len(ordered) // 2]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:7.2f}"

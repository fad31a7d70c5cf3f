"""What ``Wait`` callers cost an origin as their number grows: one task driver in process
(alone, an in-memory journal, an engine that takes 1 ms a request, 8 at once), ``--tasks``
tasks each submitted and then waited for by one of ``--callers`` concurrent callers (as a
``Submit`` then ``Wait`` client, or ``SubmitStream`` with many in flight, does).

    python -m bench.tasks_waiters [--tasks 1500] [--callers 8,128] [--json]

Rows: CPU per task, tasks per second, and the passes of Wait's loop per task (each pass reads
the task's lifecycle: once at the start and once per wake-up). When every change woke every
waiting caller, the passes grew with the callers (65.6 per task with 128, bench/RESULTS.md);
with each task's own wake-up a task is read at most once per change of its own (queued,
running). Target: at most 3 passes per task with the most callers. Also printed: CPU per task
with the most callers over that with the fewest (more callers also means a longer queue,
which costs the scheduler core more per task: not a target here).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench._targets import add_json_flag, at_most, emit, human, print_table
from p2pagent._proto import agent_pb2
from p2pagent.inference import tensors
from p2pagent.membership.view import StaticDirectory
from p2pagent.tasks import lifecycle
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.driver import TasksDriver
from p2pagent.testing.engines import GatedEngine
from p2pagent.testing.journal import MemoryJournal
from p2pagent.testing.peer_link import MemoryPeers
from p2pagent.transport.metrics import RpcMetrics

MODEL = "double"


class _OneMsEngine(GatedEngine):
    async def infer(self, model: str, inputs: Any, deadline: float | None = None) -> Any:
        await asyncio.sleep(0.001)
        return await super().infer(model, inputs, deadline)


class _CountingLifecycle:
    """Counts reads of a task's lifecycle events: one per pass of Wait's loop."""

    def __init__(self) -> None:
        self.reads = 0
        self._events = lifecycle.TaskLifecycle.events

    def __enter__(self) -> _CountingLifecycle:
        original = self._events

        def events(table: lifecycle.TaskLifecycle, task_id: str, after_seq: int = 0) -> Any:
            self.reads += 1
            return original(table, task_id, after_seq)

        lifecycle.TaskLifecycle.events = events  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        lifecycle.TaskLifecycle.events = self._events  # type: ignore[method-assign]


async def _run(n: int, callers: int, data_dir: Path) -> dict[str, float]:
    engine = _OneMsEngine(0.001, opened=True)
    d = TasksDriver(
        "solo", TasksConfig(placement="local"), capacity=8, engine=engine,
        models=lambda: [MODEL], data_dir=data_dir, channels=None,
        peers=MemoryPeers().link("solo"), members=StaticDirectory("solo"),
        metrics=RpcMetrics(), journal=MemoryJournal(),
    )  # fmt: skip
    await d.start()
    x = tensors.to_proto("x", torch.ones(1, 2))
    request = agent_pb2.SubmitRequest(model=MODEL, inputs=[x])
    left = n

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            task_id = await d.submit(request)
            async for _ in d.wait(task_id):
                pass

    try:
        with _CountingLifecycle() as counted:
            cpu, start = time.process_time(), time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(callers)))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - start
    finally:
        await d.stop()
    return {
        "callers": callers,
        "cpu_us_per_task": round(1e6 * cpu / n, 1),
        "tasks_per_s": round(n / wall, 1),
        "wait_passes_per_task": round(counted.reads / n, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tasks", type=int, default=1500)
    p.add_argument("--callers", default="8,128", help="comma-separated caller counts")
    add_json_flag(p)
    args = p.parse_args()
    counts = sorted(int(c) for c in args.callers.split(","))
    with human(args.json):
        rows = []
        for callers in counts:
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(asyncio.run(_run(args.tasks, callers, Path(tmp))))
        print("| callers | CPU us a task | tasks/s | Wait passes a task |")
        print("|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['callers']} | {r['cpu_us_per_task']} | {r['tasks_per_s']} | "
                  f"{r['wait_passes_per_task']} |")  # fmt: skip
        ratio = rows[-1]["cpu_us_per_task"] / rows[0]["cpu_us_per_task"]
        print(f"CPU per task with {counts[-1]} callers / with {counts[0]}: {ratio:.2f}x")
        name = f"Wait's passes per task with {counts[-1]} callers"
        targets = [at_most(name, rows[-1]["wait_passes_per_task"], 3.0)]
        print_table(targets)
    emit(args.json, targets, rows=rows, cpu_ratio=round(ratio, 3))


if __name__ == "__main__":
    main()

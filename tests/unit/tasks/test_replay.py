"""Replay: the inputs a running scheduler received, fed to a fresh core, give the same effects.

Two real task drivers (journal processes, asyncio adapters, an engine that takes 10 ms a
task) share work over the in-memory peer transport: tasks submitted to n1 are stolen by n2.
Each driver's core records every input; a fresh core of the same seed fed the same inputs
must return exactly what the running one returned, effect for effect. So the core is pure
(no clock, no hidden randomness, no I/O), and what the simulator drives is what ran.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import torch

from p2pagent._proto import agent_pb2
from p2pagent.inference import tensors
from p2pagent.membership.view import StaticDirectory
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.core import TaskNode
from p2pagent.tasks.driver import TasksDriver
from p2pagent.tasks.effects import SendSteal, StartRun
from p2pagent.tasks.placement import make_placement
from p2pagent.testing.peer_link import MemoryHints, MemoryPeers
from p2pagent.testing.recording import RecordingTaskNode, replay
from p2pagent.transport.metrics import RpcMetrics

MODEL = "double"


class SleepyEngine:
    """``x * 2`` after 10 ms: a device kernel's wait, no CPU."""

    def __init__(self) -> None:
        self.runs = 0

    def marginal_seconds_per_row(self, model: str) -> float | None:
        return 0.01

    def marginal_seconds_per_token(self, model: str) -> float | None:
        return None  # a model without sequences: costed per row

    def batching_measured(self, model: str) -> bool:
        return True

    def full_batch_s(self, model: str) -> float | None:
        return None

    async def infer(self, model: str, inputs: Any, deadline: float | None = None) -> Any:
        await asyncio.sleep(0.01)
        self.runs += 1
        return {"y": inputs["x"].to_torch() * 2}


def _driver(name: str, seed: int, tmp: Path, peers: MemoryPeers, hints: MemoryHints,
            engine: SleepyEngine) -> TasksDriver:  # fmt: skip
    d = TasksDriver(
        name, TasksConfig(placement="work_stealing"), capacity=1, engine=engine,
        models=lambda: [MODEL], data_dir=tmp / name, channels=None,
        members=StaticDirectory(name), metrics=RpcMetrics(), rng=random.Random(seed),
        hints=hints.channel(name), peers=peers.link(name), core_type=RecordingTaskNode,
    )  # fmt: skip
    peers.join(d)
    return d


def _fresh(name: str, seed: int) -> TaskNode:
    return TaskNode(
        name, TasksConfig(), placement=make_placement("work_stealing"),
        rng=random.Random(seed), capacity=1, models=lambda: [MODEL],
        batching_measured=lambda model: True,
    )  # fmt: skip


async def test_a_recorded_run_replays_to_the_same_effects(tmp_path: Path) -> None:
    peers, hints = MemoryPeers(), MemoryHints()
    engines = {"n1": SleepyEngine(), "n2": SleepyEngine()}
    drivers = {
        name: _driver(name, seed, tmp_path, peers, hints, engines[name])
        for name, seed in (("n1", 11), ("n2", 22))
    }
    for d in drivers.values():
        await d.start()
    try:
        n1 = drivers["n1"]
        x = tensors.to_proto("x", torch.ones(1, 2))
        # On a loaded machine n1 may finish a round before n2 hears of its queue: more
        # rounds, a bounded number, until something was stolen.
        for _ in range(5):
            ids = [
                await n1.submit(agent_pb2.SubmitRequest(model=MODEL, inputs=[x])) for _ in range(40)
            ]
            for task_id in ids:
                events = [e async for e in n1.wait(task_id)]
                assert events[-1].kind == agent_pb2.TaskEvent.KIND_DONE, events[-1]
            if engines["n2"].runs > 0:
                break
    finally:
        for d in drivers.values():
            await d.stop()
    assert engines["n2"].runs > 0, "n2 stole nothing: the run shows too little"
    for name, seed in (("n1", 11), ("n2", 22)):
        core = drivers[name].core
        assert isinstance(core, RecordingTaskNode)
        calls = core.recorded
        effects = [e for c in calls for e in _effects(c.returned)]
        assert any(isinstance(e, StartRun) for e in effects)
        if name == "n2":
            assert any(isinstance(e, SendSteal) for e in effects)
        assert replay(calls, _fresh(name, seed)) == []


def _effects(returned: Any) -> list[Any]:
    if isinstance(returned, tuple):
        returned = returned[-1]
    return returned if isinstance(returned, list) else []


async def test_a_missing_input_changes_what_comes_out(tmp_path: Path) -> None:
    """The comparison can fail: the log without the run's end replays differently."""
    peers, hints = MemoryPeers(), MemoryHints()
    d = _driver("n1", 11, tmp_path, peers, hints, SleepyEngine())
    await d.start()
    try:
        x = tensors.to_proto("x", torch.ones(1, 2))
        task_id = await d.submit(agent_pb2.SubmitRequest(model=MODEL, inputs=[x]))
        _ = [e async for e in d.wait(task_id)]
    finally:
        await d.stop()
    assert isinstance(d.core, RecordingTaskNode)
    calls = [c for c in d.core.recorded if c.method != "on_run_finished"]
    assert len(calls) < len(d.core.recorded)
    assert replay(calls, _fresh("n1", 11)) != []

"""Two task drivers in one process on fake time: in-memory peers, hints and journals, and a
clock that moves only when the test advances it. No child process, no network, no sleeps.

A thief steals part of a burst and then goes silent (its engine hangs, and it is cut off): the
origin keeps its lease until ``tasks.lease_s`` has passed on the clock, then runs the tasks
itself, at their next attempt, and every result is delivered once.
"""

from __future__ import annotations

import random

import pytest
import torch

from p2pagent._proto import agent_pb2
from p2pagent.errors import Unavailable
from p2pagent.inference import tensors
from p2pagent.membership.view import StaticDirectory
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.driver import TasksDriver
from p2pagent.testing.clock import FakeClock, settle
from p2pagent.testing.engines import GatedEngine
from p2pagent.testing.journal import MemoryJournal
from p2pagent.testing.peer_link import MemoryHints, MemoryPeers
from p2pagent.transport.metrics import RpcMetrics

MODEL = "double"


async def test_a_silent_thief_s_tasks_run_at_the_origin_when_their_lease_ends() -> None:
    clock, peers, hints = FakeClock(), MemoryPeers(), MemoryHints()
    engines = {"n1": GatedEngine(), "n2": GatedEngine()}
    drivers = {}
    for seed, name in enumerate(("n1", "n2")):
        drivers[name] = d = TasksDriver(
            name, TasksConfig(placement="work_stealing"), capacity=1, engine=engines[name],
            models=lambda: [MODEL], data_dir=None, channels=None,  # type: ignore[arg-type]
            members=StaticDirectory(name), metrics=RpcMetrics(), rng=random.Random(seed),
            hints=hints.channel(name), peers=peers.link(name), journal=MemoryJournal(),
            clock=clock,
        )  # fmt: skip
        peers.join(d)
        await d.start()
    n1, n2 = drivers["n1"], drivers["n2"]
    try:
        await settle()
        # Each published its first hint when it started: the other knows what it serves.
        assert n1.peer_models() == n2.peer_models() == {MODEL}
        x = tensors.to_proto("x", torch.ones(1, 2))
        ids = [await n1.submit(agent_pb2.SubmitRequest(model=MODEL, inputs=[x])) for _ in range(8)]
        await settle()
        stolen = set(n1.leases.held_by("n2"))
        assert stolen and engines["n2"].started == 1, (stolen, engines["n2"].started, peers.calls)
        assert n2.core.stats.stolen_in == len(stolen)

        peers.cut("n2")  # silent from now on; its engine never finishes
        engines["n1"].gate.set()
        lease_s = n1.cfg.lease_s
        await clock.advance(lease_s / 2)
        assert set(n1.leases.held_by("n2")) == stolen  # its lease still runs
        for _ in range(int(lease_s)):
            await clock.advance(1.0)
        assert n1.leases.held_by("n2") == []

        for task_id in ids:
            events = [e async for e in n1.wait(task_id)]
            (last,) = events
            assert last.kind == agent_pb2.TaskEvent.KIND_DONE and last.node == "n1"
            assert list(last.outputs) and last.outputs[0].name == "y"
        assert len(n1.core.leases) == 0
        for task_id in stolen:  # run here at their next attempt
            (done,) = [e for e in n1.core.leases.lifecycle.events(task_id) if e.state.terminal]
            assert done.node == "n1" and done.attempt == 1
    finally:
        for d in drivers.values():
            engines[d.name].gate.set()
            await d.stop()


async def test_a_submit_the_journal_refuses_is_refused_and_leaves_nothing() -> None:
    journal = MemoryJournal()
    engine = GatedEngine()
    d = TasksDriver(
        "n1", TasksConfig(), capacity=1, engine=engine, models=lambda: [MODEL],
        data_dir=None, channels=None, members=StaticDirectory("n1"),  # type: ignore[arg-type]
        metrics=RpcMetrics(), peers=MemoryPeers().link("n1"), journal=journal, clock=FakeClock(),
    )  # fmt: skip
    await d.start()
    try:
        x = tensors.to_proto("x", torch.ones(1, 2))
        journal.down = True
        with pytest.raises(Unavailable, match="could not journal the task"):
            await d.submit(agent_pb2.SubmitRequest(model=MODEL, inputs=[x]))
        assert len(d.leases) == 0 and d.queue.n_queued == 0 and d.running == 0
        assert journal.rows == {}
        journal.down = False
        engine.gate.set()
        task_id = await d.submit(agent_pb2.SubmitRequest(model=MODEL, inputs=[x]))
        events = [e async for e in d.wait(task_id)]
        assert events[-1].kind == agent_pb2.TaskEvent.KIND_DONE
        assert journal.rows[task_id].result is not None  # journaled before it was shown
    finally:
        engine.gate.set()
        await d.stop()

"""A task driver alone in its mesh (no peer is ever called), over a fake engine; and, for the
tests of what a caller waiting on its submission gets journaled, such drivers over a gated
engine and an in-memory journal, built and stopped by :class:`JournaledDrivers`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from p2pagent._proto import agent_pb2
from p2pagent.membership.view import StaticDirectory
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.driver import TasksDriver
from p2pagent.tasks.results import TaskResult
from p2pagent.tasks.wire import result_event
from p2pagent.testing.engines import GatedEngine
from p2pagent.testing.journal import MemoryJournal
from p2pagent.testing.peer_link import MemoryPeers
from p2pagent.transport.metrics import RpcMetrics


def solo_driver(
    engine: Any,
    data_dir: Path,
    model: str,
    capacity: int,
    *,
    config: TasksConfig | None = None,
    journal: MemoryJournal | None = None,
) -> TasksDriver:
    """Not started yet; ``engine`` needs ``infer``, ``marginal_seconds_per_row`` and
    ``batching_measured``. Placement ``local`` unless ``config`` says otherwise; the journal
    is a real one in ``data_dir`` unless ``journal`` is given."""
    return TasksDriver(
        "solo",
        config or TasksConfig(placement="local"),
        capacity=capacity,
        engine=engine,
        models=lambda: [model],
        data_dir=data_dir,
        channels=None,
        peers=MemoryPeers().link("solo"),  # alone: every peer is unreachable
        members=StaticDirectory("solo"),
        metrics=RpcMetrics(),
        journal=journal,
    )


#: A driver, its engine (its gate open) and its journal (counting its groups).
Journaled = tuple[TasksDriver, GatedEngine, MemoryJournal]


class JournaledDrivers:
    """Builds started solo drivers of model ``model`` over a gated engine and an in-memory
    journal; :meth:`stop` stops every one it built."""

    def __init__(self, data_dir: Path, model: str) -> None:
        self.data_dir = data_dir
        self.model = model
        self._made: list[TasksDriver] = []

    def build(
        self,
        cost_s: float = 0.0001,
        hold_s: float = 0.5,
        capacity: int = 1,
        journal: MemoryJournal | None = None,
    ) -> Journaled:
        """Not started (and not stopped by :meth:`stop`): for a test that stops it itself.
        ``cost_s``: what each request costs the engine; ``hold_s``: ``tasks.journal_hold_s``."""
        engine, journal = GatedEngine(cost_s, opened=True), journal or MemoryJournal()
        config = TasksConfig(journal_hold_s=hold_s)
        d = solo_driver(engine, self.data_dir, self.model, capacity, config=config, journal=journal)
        return d, engine, journal

    async def __call__(
        self, cost_s: float = 0.0001, hold_s: float = 0.5, capacity: int = 1
    ) -> Journaled:
        """A started driver, stopped by :meth:`stop`."""
        made = self.build(cost_s, hold_s, capacity)
        await made[0].start()
        self._made.append(made[0])
        return made

    async def stop(self) -> None:
        for d in self._made:
            await d.stop()


async def events_of(
    outcome: TaskResult | AsyncIterator[agent_pb2.TaskEvent],
) -> list[agent_pb2.TaskEvent]:
    """What a ``SubmitAndWait`` caller receives for ``TasksDriver.submit_and_wait``'s outcome:
    the one result event of a task run at once, or every event of one that was queued."""
    if isinstance(outcome, TaskResult):
        return [result_event(outcome.task_id, outcome)]
    return [e async for e in outcome]

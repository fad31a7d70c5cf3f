"""The task driver when its journal writer process dies (SIGSTOP / SIGKILL of the child): a
``Submit`` whose write is never confirmed is refused and leaves nothing behind, and a result
made while no writer runs is kept until one is back. Integration: these kill processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from p2pagent.errors import Unavailable
from p2pagent.tasks.driver import TasksDriver
from p2pagent.testing.engines import GatedEngine
from tests.unit.tasks.test_driver_wait import DONE, _submit, driver

__all__ = ["driver"]  # the fixture, shared with the unit tests of the driver


async def test_a_submit_that_cannot_be_journaled_is_refused_and_fails_its_task(
    driver: tuple[TasksDriver, GatedEngine],
) -> None:
    d, engine = driver
    pid = d._journal.writer_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the write is sent and never confirmed...
    submitting = asyncio.ensure_future(d.submit(_submit(7.0)))
    await asyncio.sleep(0.05)
    os.kill(pid, signal.SIGKILL)  # ...and the writer dies
    with pytest.raises(Unavailable, match="could not journal the task"):
        await submitting
    # Nothing of it is left running or queued, and it never counts as accepted.
    engine.gate.set()
    await asyncio.sleep(0.05)
    assert d.queue.n_queued == 0 and d.running == 0
    assert len(d.leases) == 0
    deadline = time.monotonic() + 10
    while d._journal.writer_pid in (None, pid):  # it is started again
        assert time.monotonic() < deadline, "the journal writer was not restarted"
        await asyncio.sleep(0.01)
    accepted = await d.submit(_submit(1.0))
    assert [e.kind for e in [e async for e in d.wait(accepted)]][-1] == DONE


async def test_a_result_made_while_the_journal_writer_is_down_is_kept_until_it_is_back(
    driver: tuple[TasksDriver, GatedEngine],
) -> None:
    d, engine = driver
    task_id = await d.submit(_submit(4.0))
    # Killed twice within seconds: restarted at once the first time, after a backoff (0.5 s)
    # the second, which leaves a window with no writer.
    journal = d._journal
    deadline = time.monotonic() + 10
    pid = journal.writer_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    while journal.restarts < 1 or journal.writer_pid in (None, pid):
        assert time.monotonic() < deadline, "the journal writer was not restarted"
        await asyncio.sleep(0.005)
    pid = journal.writer_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    while journal.writer_pid is not None:
        assert time.monotonic() < deadline, "the writer's death was not seen"
        await asyncio.sleep(0.005)
    engine.gate.set()  # the task finishes while no writer can journal its result
    events = [e async for e in d.wait(task_id)]
    assert events[-1].kind == DONE
    assert d._journal.restarts == 2

"""Holding a submission back so that it commits with its result: one fsync instead of two.

A ``SubmitAndWait`` (or ``SubmitStream``) caller waits for the task's result on the same call.
Its first event, the task id, may be shown only once the submission is durable, and the
result only once the result is durable. Written as they come, a short task's result arrives
while the submission's fsync is under way and waits for a second fsync of its own: two in a
row (bench/RESULTS.md measured SubmitAndWait at two fsyncs plus the call).

So such a submission is held here for up to ``tasks.journal_hold_s`` (when the task is
estimated to take less). If its result comes meanwhile, both are sent to the writer in one
piece and commit in one group; otherwise the submission is sent when the time is up, as any
other. The task is queued and may run while its submission is held; nothing about it is
shown to anyone before the submission is durable, and a result is never sent before its
submission, so the journal stays in commit order. A node that dies while holding one never
acknowledged it: the caller sees the call fail, as with a node that died before the fsync.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from p2pagent.tasks.adapter import Journal
from p2pagent.tasks.journal import Finished, JournalRow, Submitted, Write


class HoldingJournal:
    """A :class:`~p2pagent.tasks.adapter.Journal` that can hold submissions back (see the
    module docstring); everything else goes straight to ``inner``."""

    def __init__(self, inner: Journal) -> None:
        self.inner = inner
        #: Held submissions by task id: the write, the future its caller awaits, its timer.
        self._held: dict[str, tuple[Submitted, asyncio.Future[None], asyncio.TimerHandle]] = {}

    @property
    def closed(self) -> bool:
        return self.inner.closed

    @property
    def holding(self) -> int:
        return len(self._held)

    async def open(self) -> list[JournalRow]:
        return await self.inner.open()

    def hold(self, write: Submitted, hold_s: float) -> asyncio.Future[None]:
        """Sends ``write`` with its task's result if that comes within ``hold_s``, else then;
        the future resolves once it is durable (Unavailable: it could not be sent)."""
        if hold_s <= 0:
            return self.inner.write(write)
        if self.inner.closed:
            self.inner.write(write)  # raises the journal's own Unavailable
        loop = asyncio.get_running_loop()
        task_id = write.spec.task_id
        durable: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(hold_s, self._send_held, task_id)
        self._held[task_id] = (write, durable, timer)
        return durable

    def write(self, write: Write) -> asyncio.Future[None]:
        if isinstance(write, Finished) and write.task_id in self._held:
            submitted, durable, timer = self._held.pop(write.task_id)
            timer.cancel()
            try:
                sent, finished = self.inner.write_many([submitted, write])
            except Exception as e:
                _fail(durable, e)
                raise
            _chain(sent, durable)
            return finished
        return self.inner.write(write)

    def write_many(self, writes: Sequence[Write]) -> list[asyncio.Future[None]]:
        """As ``TaskJournal.write_many``: in one piece (one group) unless a held submission
        has to go with its result."""
        if any(isinstance(w, Finished) and w.task_id in self._held for w in writes):
            return [self.write(w) for w in writes]
        return self.inner.write_many(writes)

    async def purge(self, finished_before: float) -> None:
        await self.inner.purge(finished_before)

    async def close(self) -> None:
        for task_id in list(self._held):  # committed before the writer stops
            self._send_held(task_id)
        await self.inner.close()

    def _send_held(self, task_id: str) -> None:
        held = self._held.pop(task_id, None)
        if held is None:
            return
        submitted, durable, timer = held
        timer.cancel()
        try:
            sent = self.inner.write(submitted)
        except Exception as e:
            _fail(durable, e)
            return
        _chain(sent, durable)


def _chain(source: asyncio.Future[None], target: asyncio.Future[None]) -> None:
    def copy(done: asyncio.Future[None]) -> None:
        if target.done():
            return
        if done.cancelled():
            target.cancel()
        elif (e := done.exception()) is not None:
            target.set_exception(e)
        else:
            target.set_result(None)

    source.add_done_callback(copy)


def _fail(target: asyncio.Future[None], e: Exception) -> None:
    if not target.done():
        target.set_exception(e)

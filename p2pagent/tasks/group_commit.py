"""The task journal as the event loop uses it: one worker thread owns the SQLite connection,
and writes arriving while a batch is being synced share the next transaction and fsync
(group commit), so concurrent submissions do not queue behind one fsync each.

A write that finds the journal idle is handed to the thread at once, from ``write`` itself,
and a finished batch resolves its futures from one loop callback: no task sits between the
caller and the disk, since each loop iteration it would wait for is latency on every Submit.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from p2pagent.errors import Unavailable
from p2pagent.tasks.journal import Journal, JournalRow, Write

Batch = list[tuple[Write, asyncio.Future[None]]]


class GroupCommitJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="task-journal")
        self._journal: Journal | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Writes waiting for the batch in flight to finish.
        self._pending: Batch = []
        self._in_flight: asyncio.Future[None] | None = None
        self._closed = False

    async def open(self) -> list[JournalRow]:
        """Opens the journal and returns every task in it, oldest submission first."""
        loop = self._loop = asyncio.get_running_loop()
        journal = await loop.run_in_executor(self._thread, Journal, self.path)
        self._journal = journal
        return await loop.run_in_executor(self._thread, journal.load)

    def write(self, write: Write) -> asyncio.Future[None]:
        """Queues ``write`` now (writes commit in the order they are queued) and returns a
        future that resolves once it is durable, so that the caller can start work that does
        not need it durable yet before awaiting it."""
        loop = self._loop
        if loop is None or self._closed:
            raise Unavailable("the task journal is not open")
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((write, future))
        if self._in_flight is None:
            self._commit_pending()
        return future

    async def purge(self, finished_before: float) -> None:
        journal = self._journal
        if journal is not None:
            await asyncio.get_running_loop().run_in_executor(
                self._thread, journal.purge, finished_before
            )

    async def close(self) -> None:
        self._closed = True
        if self._in_flight is not None:
            await asyncio.gather(self._in_flight, return_exceptions=True)
        for _, f in self._pending:
            if not f.done():
                f.set_exception(Unavailable("the node is stopping; the write was not journaled"))
        self._pending = []
        journal = self._journal
        if journal is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, journal.close)
        self._thread.shutdown(wait=False)

    def _commit_pending(self) -> None:
        loop, journal = self._loop, self._journal
        assert loop is not None and journal is not None
        batch, self._pending = self._pending, []
        self._in_flight = loop.create_future()
        done = self._thread.submit(journal.commit, [w for w, _ in batch])

        def back_to_the_loop(d: Future[None]) -> None:  # on the journal thread
            try:
                loop.call_soon_threadsafe(self._committed, batch, d)
            except RuntimeError:  # the loop is closed: nobody is left to tell
                pass

        done.add_done_callback(back_to_the_loop)

    def _committed(self, batch: Batch, done: Future[None]) -> None:
        error = done.exception()
        for _, f in batch:
            if f.done():
                continue
            if error is None:
                f.set_result(None)
            else:
                f.set_exception(error)
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.set_result(None)
        if self._pending and not self._closed:
            self._commit_pending()

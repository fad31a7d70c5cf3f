"""The task journal as the event loop uses it: one worker thread owns the SQLite connection,
and writes arriving while a batch is being synced share the next transaction and fsync
(group commit), so concurrent submissions do not queue behind one fsync each."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from p2pagent.tasks.journal import Journal, JournalRow, Write


class GroupCommitJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="task-journal")
        self._journal: Journal | None = None
        self._pending: list[tuple[Write, asyncio.Future[None]]] = []
        self._ready = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    async def open(self) -> list[JournalRow]:
        """Opens the journal and returns every task in it, oldest submission first."""
        loop = asyncio.get_running_loop()
        journal = await loop.run_in_executor(self._thread, Journal, self.path)
        self._journal = journal
        rows = await loop.run_in_executor(self._thread, journal.load)
        self._writer = asyncio.create_task(self._write_batches(), name="tasks-journal")
        return rows

    def write(self, write: Write) -> asyncio.Future[None]:
        """Queues ``write`` now (writes commit in the order they are queued) and returns a
        future that resolves once it is durable, so that the caller can start work that does
        not need it durable yet before awaiting it."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((write, future))
        self._ready.set()
        return future

    async def purge(self, finished_before: float) -> None:
        journal = self._journal
        if journal is not None:
            await asyncio.get_running_loop().run_in_executor(
                self._thread, journal.purge, finished_before
            )

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        journal = self._journal
        if journal is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, journal.close)
        self._thread.shutdown(wait=False)

    async def _write_batches(self) -> None:
        loop = asyncio.get_running_loop()
        journal = self._journal
        assert journal is not None
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                await loop.run_in_executor(self._thread, journal.commit, [w for w, _ in batch])
            except Exception as e:
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            for _, f in batch:
                if not f.done():
                    f.set_result(None)

"""An in-memory task journal with the interface of ``tasks/journal.py``'s ``TaskJournal``.

Writes are durable at once (or refused while :attr:`MemoryJournal.down` is set, as a journal
whose writer process is being restarted refuses them; or pending while
:attr:`MemoryJournal.holding` is set, as during a slow fsync); its rows survive a driver
restart when the same object is given to the next driver. For deterministic tests of the
task driver: no child process, no disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from p2pagent.errors import Unavailable
from p2pagent.tasks.journal import JournalRow, Submitted, Whole, Write


class MemoryJournal:
    def __init__(self) -> None:
        self.rows: dict[str, JournalRow] = {}
        #: Refuse writes (Unavailable), as a journal whose writer is down does.
        self.down = False
        #: Writes are taken but not durable until :meth:`release` (a slow fsync).
        self.holding = False
        self._held: list[asyncio.Future[None]] = []
        #: Groups written (what would be one fsync each).
        self.groups = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def open(self) -> list[JournalRow]:
        self._closed = False
        return sorted(self.rows.values(), key=lambda r: r.submitted)

    def write(self, write: Write, grouped: bool = False) -> asyncio.Future[None]:
        if not grouped:
            self.groups += 1
        if self.down or self._closed:
            raise Unavailable("the task journal is down")
        if isinstance(write, Submitted):
            self.rows[write.spec.task_id] = JournalRow(write.spec, write.submitted, None, None)
        elif isinstance(write, Whole):
            self.rows[write.spec.task_id] = JournalRow(
                write.spec, write.submitted, write.finished, write.result
            )
        elif write.task_id in self.rows:  # a result (of a task it holds, as the table does)
            row = self.rows[write.task_id]
            self.rows[write.task_id] = JournalRow(row.spec, row.submitted, write.finished,
                                                  write.result)  # fmt: skip
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.holding:
            self._held.append(done)
        else:
            done.set_result(None)
        return done

    def write_many(self, writes: Sequence[Write]) -> list[asyncio.Future[None]]:
        """As ``TaskJournal.write_many``: one group; counted in :attr:`groups`."""
        self.groups += 1
        return [self.write(w, grouped=True) for w in writes]

    def release(self) -> None:
        """Every held write is durable now, in the order written; later ones at once."""
        self.holding = False
        held, self._held = self._held, []
        for done in held:
            if not done.done():
                done.set_result(None)

    async def purge(self, finished_before: float) -> None:
        for task_id, row in list(self.rows.items()):
            if row.finished is not None and row.finished < finished_before:
                del self.rows[task_id]

    async def close(self) -> None:
        self._closed = True

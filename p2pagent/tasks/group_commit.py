"""The task journal as the event loop uses it: writes made together share one transaction and
one fsync (group commit), and the commit runs where it costs the caller least.

Two places to commit, chosen by how long commits take (``CommitTimer``):

- **On the loop** while the disk syncs fast (the average commit is at most
  ``tasks.journal_inline_max_s``): every write made in one loop iteration is committed at the
  end of it, in one transaction, before the loop goes on, the way Redis commits its append-only
  file with ``appendfsync always``. The loop stalls for one fast sync, but the GIL is released
  during it; on a busy host that is cheaper than the alternative: a worker thread that must win
  the GIL back from the loop before it can start the commit and again after each call into
  SQLite measured 300-700 us per commit here, for a 150 us fsync.
- **On a worker thread** when syncs are slow (a network disk, a saturated device): the loop
  must not stall for milliseconds. Writes arriving while a batch syncs share the next batch.

Commit times are measured in either place, so a disk that recovers brings commits back to the
loop. Either way a write's future resolves only once it is durable, writes commit in the order
they were made, and a failed commit fails only its own writes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from p2pagent.errors import Unavailable
from p2pagent.tasks.journal import Journal, JournalRow, Write

Batch = list[tuple[Write, asyncio.Future[None]]]
T = TypeVar("T")

#: Weight of the newest commit in the running average.
COMMIT_EWMA_ALPHA = 0.2


class CommitTimer:
    """The running average of how long a commit takes; decides where the next one runs."""

    def __init__(self, inline_max_s: float) -> None:
        self.inline_max_s = inline_max_s
        #: Optimistic at first: one slow commit is enough to move the next ones off the loop.
        self.average_s = 0.0

    def observe(self, seconds: float) -> None:
        self.average_s += COMMIT_EWMA_ALPHA * (seconds - self.average_s)

    @property
    def inline(self) -> bool:
        return self.average_s <= self.inline_max_s and self.inline_max_s > 0


class GroupCommitJournal:
    def __init__(self, path: Path, inline_max_s: float = 0.001) -> None:
        self.path = path
        self.timer = CommitTimer(inline_max_s)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="task-journal")
        self._journal: Journal | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Writes not yet handed to a commit.
        self._pending: Batch = []
        #: Work running on the thread (a commit or a purge); writes wait for it.
        self._in_flight: asyncio.Future[None] | None = None
        self._flush_scheduled = False
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
            if self.timer.inline:
                # At the end of this loop iteration, with every other write made in it.
                if not self._flush_scheduled:
                    self._flush_scheduled = True
                    loop.call_soon(self._flush)
            else:
                # Handed over now: a callback would first wait its turn behind the loop's.
                self._commit_on_thread()
        return future

    async def purge(self, finished_before: float) -> None:
        journal = self._journal
        if journal is None or self._closed:
            return
        while self._in_flight is not None:
            await asyncio.shield(self._in_flight)
        await self._on_thread(lambda: journal.purge(finished_before))

    async def close(self) -> None:
        self._closed = True
        while self._in_flight is not None:
            await asyncio.gather(self._in_flight, return_exceptions=True)
        self._fail_pending(Unavailable("the node is stopping; the write was not journaled"))
        journal = self._journal
        if journal is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, journal.close)
        self._thread.shutdown(wait=False)

    # ---- committing -------------------------------------------------------------------------

    def _flush(self) -> None:
        """Commits the pending writes on the loop, or on the thread if commits got slow."""
        self._flush_scheduled = False
        if self._in_flight is not None or not self._pending:
            return  # whatever is in flight commits them when it finishes
        if self._closed:
            self._fail_pending(Unavailable("the node is stopping; the write was not journaled"))
            return
        if not self.timer.inline:
            self._commit_on_thread()
            return
        journal = self._journal
        assert journal is not None
        batch, self._pending = self._pending, []
        error: BaseException | None = None
        start = time.perf_counter()
        try:
            journal.commit([w for w, _ in batch])
        except Exception as e:
            error = e
        self.timer.observe(time.perf_counter() - start)
        _resolve(batch, error)

    def _commit_on_thread(self) -> None:
        journal = self._journal
        assert journal is not None
        batch, self._pending = self._pending, []
        writes = [w for w, _ in batch]

        def commit() -> float:
            start = time.perf_counter()
            journal.commit(writes)
            return time.perf_counter() - start

        def committed(done: Future[float]) -> None:
            error = done.exception()
            if error is None:
                self.timer.observe(done.result())
            _resolve(batch, error)

        self._run_on_thread(commit, committed)

    async def _on_thread(self, fn: Callable[[], T]) -> T:
        """Runs ``fn`` on the journal's thread as the work in flight (writes wait for it)."""
        result: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def done(d: Future[T]) -> None:
            error = d.exception()
            if error is None:
                result.set_result(d.result())
            else:
                result.set_exception(error)

        self._run_on_thread(fn, done)
        return await result

    def _run_on_thread(self, fn: Callable[[], T], then: Callable[[Future[T]], None]) -> None:
        """Runs ``fn`` on the thread; ``then`` gets its outcome on the loop, after which the
        writes that came meanwhile are committed. One loop callback per run: each hop between
        the thread and the loop is a thread wake-up."""
        loop = self._loop
        assert loop is not None and self._in_flight is None
        self._in_flight = loop.create_future()
        running = self._thread.submit(fn)

        def back_to_the_loop(d: Future[T]) -> None:  # on the journal thread
            try:
                loop.call_soon_threadsafe(self._finished, d, then)
            except RuntimeError:  # the loop is closed: nobody is left to tell
                pass

        running.add_done_callback(back_to_the_loop)

    def _finished(self, done: Future[T], then: Callable[[Future[T]], None]) -> None:
        in_flight, self._in_flight = self._in_flight, None
        then(done)
        if in_flight is not None:
            in_flight.set_result(None)
        if self._pending and not self._flush_scheduled:
            self._flush()

    def _fail_pending(self, error: BaseException) -> None:
        batch, self._pending = self._pending, []
        _resolve(batch, error)


def _resolve(batch: Batch, error: BaseException | None) -> None:
    for _, f in batch:
        if f.done():
            continue
        if error is None:
            f.set_result(None)
        else:
            f.set_exception(error)

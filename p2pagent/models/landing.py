"""Where a pull's chunks land: verified and written in I/O threads, their outcomes handed to
the event loop in batches.

A pull receives a chunk about every millisecond. Verifying and writing it (SHA-256, the copy
into an aligned buffer, the ``O_DIRECT`` write) runs in an I/O thread, where hashing releases
the GIL and so uses the other core. What this module saves is the glue around each chunk:
the pull used to make an asyncio task, an executor future wrapped in an asyncio future and
one event-loop wake-up per chunk. Here a chunk is one ``Executor.submit``; the thread that
finishes it appends the outcome to a list and schedules one hand-off to the loop unless one
is already pending, so while the loop is busy receiving, the outcomes of several chunks
reach it in one callback (``deliver``).

Every outcome is delivered exactly once, including a write the executor cancelled (it shuts
down with the node): ``idle`` then returns, so a cancelled pull still waits for every write
it started and nothing is half-written behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Executor, Future
from dataclasses import dataclass

from p2pagent.errors import Unavailable
from p2pagent.models.store import ChunkStore


@dataclass(frozen=True)
class Landed:
    """What became of one chunk handed to ``Landing.submit``."""

    node: str
    index: int
    size: int
    #: It matched its hash (and is written, unless ``error`` says otherwise).
    ok: bool
    #: The write failed (disk full, version deleted meanwhile) or was cancelled.
    error: BaseException | None = None


class Landing:
    """The chunk writes of one pull. Use from the event loop that made it."""

    def __init__(
        self,
        store: ChunkStore,
        manifest_id: str,
        io: Executor,
        deliver: Callable[[list[Landed]], None],
    ) -> None:
        """``deliver`` is called on the loop with the outcomes finished since its last call."""
        self._store = store
        self._mid = manifest_id
        self._io = io
        self._deliver = deliver
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._finished: list[Landed] = []
        self._handoff_pending = False
        #: Submitted and not yet delivered (loop side only).
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def outstanding(self) -> int:
        return self._outstanding

    def submit(self, node: str, index: int, data: memoryview | bytes) -> None:
        """Verifies chunk ``index`` from ``node`` and writes it if it matches, in the pool."""
        self._outstanding += 1
        self._idle.clear()
        try:
            future = self._io.submit(self._write, index, data)
        except RuntimeError:  # the pool is shut down: the node is stopping
            self._outstanding -= 1
            if not self._outstanding:
                self._idle.set()
            self._deliver([Landed(node, index, len(data), True, _stopping())])
            return
        size = len(data)
        future.add_done_callback(lambda f: self._finish(f, node, index, size))

    def _write(self, index: int, data: memoryview | bytes) -> bool:
        return self._store.write_chunk(self._mid, index, data, sync=False, direct=True)

    def _finish(self, future: Future[bool], node: str, index: int, size: int) -> None:
        """In the thread that ran (or cancelled) the write: queue its outcome for the loop."""
        try:
            landed = Landed(node, index, size, future.result())
        except CancelledError:
            landed = Landed(node, index, size, True, _stopping())
        except BaseException as e:
            landed = Landed(node, index, size, True, e)
        with self._lock:
            self._finished.append(landed)
            if self._handoff_pending:
                return
            self._handoff_pending = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._handoff)

    def _handoff(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
            self._handoff_pending = False
        self._outstanding -= len(finished)
        if not self._outstanding:
            self._idle.set()
        if finished:
            self._deliver(finished)

    async def idle(self) -> None:
        """Returns once every chunk submitted so far has been delivered."""
        await self._idle.wait()


def _stopping() -> Unavailable:
    return Unavailable("the node is stopping: its chunk writes were cancelled; pull again")

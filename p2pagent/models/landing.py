"""Where a pull's chunks land: verified and written in I/O threads, their outcomes handed to
the event loop in batches.

A pull receives a chunk about every millisecond. Verifying and writing it (SHA-256, the copy
into an aligned buffer, the ``O_DIRECT`` write) runs in an I/O thread, where hashing releases
the GIL and so uses the other core. What this module saves is the glue around each chunk:
the pull used to make an asyncio task, an executor future wrapped in an asyncio future and
one event-loop wake-up per chunk. Here a few chunks received one after the other are one
``Executor.submit`` (the puller hands them over in groups of ``LAND_CHUNKS``: one thread
wake-up, one executor future and one hand-off back per group); the thread that finishes them
appends their outcomes to a list and schedules one hand-off to the loop unless one is already
pending, so while the loop is busy receiving, the outcomes of several groups reach it in one
callback (``deliver``).

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

#: Chunks a pull hands to one I/O job: fewer thread wake-ups and hand-offs per chunk, while
#: the thread still hashes each group on the other core as the next one is received (a group
#: waits for at most this many chunks' arrival; a call's last chunks go at its end).
LAND_CHUNKS = 4

#: One chunk to land: its index and its bytes (a view of the received message).
Piece = tuple[int, memoryview | bytes]


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

    def submit(self, node: str, pieces: list[Piece]) -> None:
        """Verifies each of ``pieces`` from ``node`` and writes it if it matches, one after the
        other in one I/O job."""
        if not pieces:
            return
        self._outstanding += len(pieces)
        self._idle.clear()
        try:
            future = self._io.submit(self._write, node, pieces)
        except RuntimeError:  # the pool is shut down: the node is stopping
            self._outstanding -= len(pieces)
            if not self._outstanding:
                self._idle.set()
            self._deliver(_stopped(node, pieces))
            return
        future.add_done_callback(lambda f: self._finish(f, node, pieces))

    def _write(self, node: str, pieces: list[Piece]) -> list[Landed]:
        """In an I/O thread. Never raises: a failed write is that chunk's outcome."""
        out = []
        for index, data in pieces:
            try:
                ok = self._store.write_chunk(self._mid, index, data, sync=False, direct=True)
                out.append(Landed(node, index, len(data), ok))
            except BaseException as e:
                out.append(Landed(node, index, len(data), True, e))
        return out

    def _finish(self, future: Future[list[Landed]], node: str, pieces: list[Piece]) -> None:
        """In the thread that ran (or cancelled) the writes: queue their outcomes for the
        loop."""
        try:
            landed = future.result()
        except CancelledError:
            landed = _stopped(node, pieces)
        except BaseException as e:  # not raised by _write; kept so no outcome is ever lost
            landed = [Landed(node, i, len(data), True, e) for i, data in pieces]
        with self._lock:
            self._finished.extend(landed)
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


def _stopped(node: str, pieces: list[Piece]) -> list[Landed]:
    """The outcomes of writes cancelled (or refused) because the node is stopping."""
    error = Unavailable("the node is stopping: its chunk writes were cancelled; pull again")
    return [Landed(node, index, len(data), True, error) for index, data in pieces]

"""The origin's durable task journal, as the daemon uses it.

A task is written here before ``Submit`` answers with its id, and its result before it is
shown to any ``Wait`` caller or acknowledged to the executor. After a crash the daemon reads
the journal back: unfinished tasks are queued again (with a new attempt, so whatever an older
attempt still produces counts as a duplicate, never a second result), finished ones are
served to ``Wait`` until ``done_retention_s`` has passed.

The table is written by a child process (:mod:`p2pagent.tasks.journal_writer`, which says why
and how); this side sends it a frame a write and resolves the writes' futures, in order, as
its acks come back, all from protocol callbacks on the event loop: no task and no thread sits
between a caller and the disk.

If the writer dies, the writes it had not acknowledged fail with ``Unavailable`` (they may or
may not be on disk: nothing was acknowledged, so nothing acknowledged is lost), writes fail
fast while it is down, and it is started again, at once the first time, then with a backoff
if it keeps dying. The driver retries a result until it is journaled; submissions refused
that way are deleted by the next writer, in case they reached the table.

Rows hold protobuf bytes (``TaskSpec`` for the task, ``CompleteRequest`` for its result),
never pickles.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]

from p2pagent._proto import peer_pb2
from p2pagent.errors import Unavailable
from p2pagent.tasks import journal_writer
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.journal_writer import JournalTable

log = logging.getLogger(__name__)

#: A frame that changes nothing: the writer's first answer proves it can write the table.
NOTHING_TO_PURGE: bytes = msgpack.packb(["P", float("-inf")])


@dataclass(frozen=True)
class Submitted:
    spec: peer_pb2.TaskSpec
    submitted: float


@dataclass(frozen=True)
class Finished:
    task_id: str
    result: peer_pb2.CompleteRequest
    finished: float


@dataclass(frozen=True)
class Whole:
    """A task journaled once it has finished (a ``SubmitAndWait`` run at once): submission
    and result in one row, one statement. Its ``spec`` may leave the inputs out: nothing
    reads a finished task's inputs."""

    spec: peer_pb2.TaskSpec
    submitted: float
    result: peer_pb2.CompleteRequest
    finished: float


Write = Submitted | Finished | Whole


@dataclass(frozen=True)
class JournalRow:
    spec: peer_pb2.TaskSpec
    submitted: float
    finished: float | None
    result: peer_pb2.CompleteRequest | None


def encode(write: Write) -> bytes:
    if isinstance(write, Submitted):
        s = write.spec
        frame: list[Any] = ["S", s.task_id, s.model, s.SerializeToString(), write.submitted]
    elif isinstance(write, Whole):
        s = write.spec
        frame = [
            "W", s.task_id, s.model, s.SerializeToString(), write.submitted,
            write.result.SerializeToString(), write.finished,
        ]  # fmt: skip
    else:
        frame = ["F", write.task_id, write.result.SerializeToString(), write.finished]
    out: bytes = msgpack.packb(frame)
    return out


def read_rows(path: Path) -> list[JournalRow]:
    """Every task in the journal at ``path``, oldest submission first (blocking)."""
    table = JournalTable(path)
    try:
        raw = table.load()
    finally:
        table.close()
    return [
        JournalRow(
            peer_pb2.TaskSpec.FromString(spec),
            submitted,
            finished,
            peer_pb2.CompleteRequest.FromString(result) if result else None,
        )
        for spec, submitted, finished, result in raw
    ]


class _Writer:
    """One writer process: frames out on its stdin, acks in from its stdout.

    Started with ``subprocess.Popen``, which execs the child from a vfork: no ``fork()``, so
    none of gRPC's fork handlers runs. (An event loop's ``subprocess_exec`` forks: with gRPC's
    threads busy, the child was seen to crash (SIGSEGV) or hang before its exec.) The pipes are
    then driven by the loop; the writer's end is seen as the end of its stdout."""

    def __init__(self, journal: TaskJournal, process: subprocess.Popen[bytes]) -> None:
        self.journal = journal
        self.process = process
        self.stdin: asyncio.WriteTransport | None = None
        #: Futures of the frames sent and not yet acknowledged, in the order sent, each with
        #: the task id when the frame is a submission.
        self.unacked: collections.deque[tuple[asyncio.Future[None], str | None]] = (
            collections.deque()
        )
        self.replies = msgpack.Unpacker(raw=False)
        self.gone: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        #: Takes writes: connected, and neither pipe has closed.
        self.up = False
        #: Its stdout has ended.
        self.ended = False
        self._reaper: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        try:
            await loop.connect_read_pipe(lambda: _Replies(self), stdout)
            transport, _ = await loop.connect_write_pipe(lambda: _Frames(self), stdin)
        except BaseException:
            self.process.kill()
            raise
        self.stdin = transport
        self.up = not self.ended

    def send(self, frames: list[tuple[bytes, asyncio.Future[None], str | None]]) -> None:
        """Writes ``frames`` to the pipe in one piece: the writer reads them as one group."""
        assert self.stdin is not None
        for _, future, submitted in frames:
            self.unacked.append((future, submitted))
        self.stdin.write(b"".join(frame for frame, _, _ in frames))

    def send_one(self, frame: bytes, future: asyncio.Future[None], submitted: str | None) -> None:
        """:meth:`send` of one frame (most writes are one)."""
        assert self.stdin is not None
        self.unacked.append((future, submitted))
        self.stdin.write(frame)

    def replies_received(self, data: bytes) -> None:
        self.replies.feed(data)
        for count, error in self.replies:
            self.journal.groups_committed += 1
            for _ in range(count):
                f, _ = self.unacked.popleft()
                if f.done():
                    continue
                if error is None:
                    f.set_result(None)
                else:
                    f.set_exception(OSError(f"the task journal could not commit: {error}"))

    def frames_refused(self) -> None:
        """Its stdin is closed: take no more writes (acks may still be on their way)."""
        self.up = False

    def replies_ended(self) -> None:
        """Its stdout ended: it has exited, or is exiting; no ack can come any more."""
        self.up = False
        self.ended = True
        while self.unacked:
            f, submitted = self.unacked.popleft()
            if submitted is not None:
                self.journal.unconfirmed_submissions.add(submitted)
            if not f.done():
                f.set_exception(
                    Unavailable(
                        "the task journal's writer process stopped before it confirmed "
                        "this write, which may or may not be on disk"
                    )
                )
        if self.stdin is not None:
            self.stdin.close()
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        code = await asyncio.get_running_loop().run_in_executor(None, self.process.wait)
        if not self.gone.done():
            self.gone.set_result(code)
        self.journal.on_writer_lost(self, code)


class _Replies(asyncio.Protocol):
    def __init__(self, writer: _Writer) -> None:
        self.writer = writer

    def data_received(self, data: bytes) -> None:
        self.writer.replies_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.writer.replies_ended()


class _Frames(asyncio.BaseProtocol):
    def __init__(self, writer: _Writer) -> None:
        self.writer = writer

    def connection_lost(self, exc: Exception | None) -> None:
        self.writer.frames_refused()


def restart_delay(previous_s: float, cfg: TasksConfig) -> float:
    """The wait before the next restart of a writer that keeps dying young: twice the last,
    from ``journal_restart_delay_s`` up to ``journal_restart_max_s`` (a writer that lived
    ``journal_stable_s`` is restarted at once)."""
    return min(cfg.journal_restart_max_s, max(cfg.journal_restart_delay_s, previous_s * 2))


class TaskJournal:
    """The journal of one origin: ``open`` it, ``write`` tasks and results, ``close`` it."""

    def __init__(self, path: Path, cfg: TasksConfig | None = None) -> None:
        self.path = path
        #: Its timing knobs (``tasks.journal_*``).
        self.cfg = cfg or TasksConfig()
        self._writer: _Writer | None = None
        self._started_at = 0.0
        self._restart_delay_s = 0.0
        self._restarting: asyncio.Task[None] | None = None
        self._closed = False
        #: Groups the writer committed (each one transaction and one fsync).
        self.groups_committed = 0
        #: Times the writer process was started again after it died.
        self.restarts = 0
        #: Tasks whose submission a dead writer never confirmed: refused to the caller, so
        #: they are deleted from the table (if they reached it) by the next writer first.
        self.unconfirmed_submissions: set[str] = set()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def writer_pid(self) -> int | None:
        w = self._writer
        return w.process.pid if w is not None and w.up else None

    async def open(self) -> list[JournalRow]:
        """Reads every task in the journal (oldest submission first), then starts the writer
        and waits for its first answer, so that a journal that cannot be written stops the
        daemon here rather than failing every Submit later."""
        rows = await asyncio.get_running_loop().run_in_executor(None, read_rows, self.path)
        await self._start_writer()
        try:
            await asyncio.wait_for(self._send(NOTHING_TO_PURGE), self.cfg.journal_open_timeout_s)
        except TimeoutError:
            await self.close()
            raise Unavailable(
                f"the task journal's writer did not answer in "
                f"{self.cfg.journal_open_timeout_s:.0f} s (tasks.journal_open_timeout_s) "
                f"(is the disk under {self.path.parent} stalled?)"
            ) from None
        except (Unavailable, OSError) as e:
            await self.close()
            raise Unavailable(f"cannot write the task journal {self.path}: {e}") from e
        return rows

    def write(self, write: Write) -> asyncio.Future[None]:
        """Sends ``write`` now (writes commit in the order they are made) and returns a future
        that resolves once it is durable, so that the caller can start work that does not need
        it durable yet before awaiting it. Raises Unavailable at once while the writer is down."""
        self._check_up()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        submitted = write.spec.task_id if isinstance(write, Submitted) else None
        assert self._writer is not None
        self._writer.send_one(encode(write), future, submitted)
        return future

    def write_many(self, writes: Sequence[Write]) -> list[asyncio.Future[None]]:
        """As :meth:`write`, for several writes sent in one piece, so that the writer commits
        them in one group (one fsync) when it is not already busy with another."""
        self._check_up()
        loop = asyncio.get_running_loop()
        frames = [
            (encode(w), loop.create_future(), w.spec.task_id if isinstance(w, Submitted) else None)
            for w in writes
        ]
        assert self._writer is not None
        self._writer.send(frames)
        return [future for _, future, _ in frames]

    async def purge(self, finished_before: float) -> None:
        """Forgets results delivered before ``finished_before``."""
        await self._send(msgpack.packb(["P", finished_before]))

    async def close(self) -> None:
        """Lets the writer commit what it was sent, then stops it."""
        self._closed = True
        if self._restarting is not None:
            self._restarting.cancel()
        w = self._writer
        if w is None:
            return
        if w.stdin is None:  # never connected (a restart cut short): nothing to commit
            w.process.kill()
        else:
            w.stdin.close()  # the writer commits what it read, answers, and exits
            try:
                await asyncio.wait_for(asyncio.shield(w.gone), self.cfg.journal_close_timeout_s)
                return
            except TimeoutError:
                log.error("tasks: the journal writer did not exit in %.0f s; killing it",
                          self.cfg.journal_close_timeout_s)  # fmt: skip
                w.process.kill()
        await asyncio.get_running_loop().run_in_executor(None, w.process.wait)

    def _send(self, frame: bytes) -> asyncio.Future[None]:
        self._check_up()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        assert self._writer is not None
        self._writer.send_one(frame, future, None)
        return future

    def _check_up(self) -> None:
        w = self._writer
        if self._closed:
            raise Unavailable("the node is stopping; the task journal is closed")
        if w is None:
            raise Unavailable("the task journal is not open")
        if not w.up:
            raise Unavailable(
                "the task journal's writer process stopped and is being restarted: retry in a "
                "moment, or submit to another node"
            )

    async def _start_writer(self) -> None:
        argv = [sys.executable, "-P", journal_writer.__file__, str(self.path)]
        process = subprocess.Popen(  # noqa: ASYNC220  # a vfork and exec: no wait here
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the writer's own complaints go to the daemon's log
        )
        # Known before the process can die, so that its death is never ignored.
        self._writer = writer = _Writer(self, process)
        self._started_at = time.monotonic()
        await writer.connect()

    def on_writer_lost(self, writer: _Writer, code: int | None) -> None:
        if writer is not self._writer or self._closed:
            return
        uptime = time.monotonic() - self._started_at
        log.error("tasks: the journal writer exited with code %s after %.1f s", code, uptime)
        if uptime >= self.cfg.journal_stable_s:
            self._restart_delay_s = 0.0
        self._schedule_restart()

    def _schedule_restart(self) -> None:
        delay = self._restart_delay_s
        self._restart_delay_s = restart_delay(delay, self.cfg)
        log.warning("tasks: starting the journal writer again in %.1f s", delay)
        self._restarting = asyncio.get_running_loop().create_task(self._restart(delay))

    async def _restart(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self._start_writer()
        except OSError as e:
            log.error("tasks: could not start the journal writer: %s", e)
            self._schedule_restart()
            return
        self.restarts += 1
        log.warning("tasks: the journal writer is running again (pid %s)", self.writer_pid)
        refused = sorted(self.unconfirmed_submissions)
        if refused:
            # First in the pipe: nothing written after it can be committed before it.
            with contextlib.suppress(Unavailable, OSError):  # kept for the next writer
                await self._send(msgpack.packb(["D", refused]))
                self.unconfirmed_submissions.difference_update(refused)

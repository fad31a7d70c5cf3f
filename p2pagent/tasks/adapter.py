"""The asyncio adapter of the scheduler core: real time in, effects carried out.

Like ``membership/driver.py`` around SWIM, and aioquic's protocol around its connection: the
core (:class:`~p2pagent.tasks.core.TaskNode`) decides, this carries out what it returns and
feeds each outcome back as an input, and runs ``tick`` at ``next_deadline`` (sleeping until an
input makes something due sooner). Where each effect goes:

- ``StartRun``: the engine (``tasks/runs.py``), then ``on_run_finished``;
- ``SendAssign`` / ``SendSteal`` / ``SendComplete`` / ``SendReport``: the peers
  (``tasks/peers.py``), then ``on_assign_result`` / ``on_steal_response`` /
  ``on_complete_ack`` / ``on_load_report``. A failed call is the one place peer-call errors
  are handled (:meth:`TaskAdapter._peer_failed`): counted per call, logged once a minute per
  peer, and fed back as "no answer";
- ``PublishHint``: membership gossip;
- ``JournalResult``: the journal (retried until it takes it), then ``on_journaled``;
- ``DeliverResult`` / ``TaskChanged`` / ``ForgetResults``: the origin's result store (the
  driver, through :class:`ResultSink`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

from p2pagent.errors import P2PAgentError, Unavailable
from p2pagent.logs import RateLimitedLog
from p2pagent.membership.hints import LoadHint
from p2pagent.tasks.core import TaskNode
from p2pagent.tasks.effects import (
    DeliverResult,
    Effect,
    ForgetResults,
    JournalResult,
    PublishHint,
    SendAssign,
    SendComplete,
    SendReport,
    SendSteal,
    StartRun,
    TaskChanged,
)
from p2pagent.tasks.journal import Finished, JournalRow, Write
from p2pagent.tasks.lifecycle import TaskEvent
from p2pagent.tasks.peers import PeerTransport
from p2pagent.tasks.results import TaskResult
from p2pagent.tasks.runs import EngineRuns
from p2pagent.tasks.spec import Task
from p2pagent.tasks.wire import result_to_proto

log = logging.getLogger(__name__)

#: Always yield this long between ticks: a due time in the past must not make the loop spin.
MIN_SLEEP_S = 0.001


class Clock(Protocol):
    """Time for the adapter: Unix seconds, and a wait that a wake-up cuts short. Tests pass
    ``p2pagent.testing.clock.FakeClock``, whose time moves only when told."""

    def now(self) -> float: ...

    async def wait(self, wake: asyncio.Event, until: float) -> None:
        """Returns when ``wake`` is set or the time is ``until`` (inf: only the wake)."""
        ...

    async def pause(self) -> None:
        """Yields to the loop between ticks (real time: ``MIN_SLEEP_S``, so that a due time
        in the past cannot make the ticker spin)."""
        ...


class RealClock:
    def now(self) -> float:
        return time.time()

    async def pause(self) -> None:
        await asyncio.sleep(MIN_SLEEP_S)

    async def wait(self, wake: asyncio.Event, until: float) -> None:
        left = until - time.time()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(left if math.isfinite(left) else None):
                await wake.wait()


class Journal(Protocol):
    """What the scheduler needs of its journal (``tasks/journal.py``; in tests
    ``p2pagent.testing.journal.MemoryJournal``)."""

    @property
    def closed(self) -> bool: ...

    async def open(self) -> list[JournalRow]: ...

    def write(self, write: Write) -> asyncio.Future[None]: ...

    def write_many(self, writes: Sequence[Write]) -> list[asyncio.Future[None]]: ...

    async def purge(self, finished_before: float) -> None: ...

    async def close(self) -> None: ...


class HintOut(Protocol):
    """Where our load hints go: the membership driver."""

    def publish_load_hint(self, hint: LoadHint, urgent: bool = False) -> None: ...


class ResultSink(Protocol):
    """The origin's store of results and waiters (the tasks driver)."""

    def deliver(self, result: TaskResult, inline: bool, now: float) -> None: ...

    def changed(self, event: TaskEvent) -> None: ...

    def forget(self, task_ids: tuple[str, ...], horizon: float) -> None: ...


class TaskAdapter:
    """Carries out one ``TaskNode``'s effects and runs its timer."""

    def __init__(
        self,
        core: TaskNode,
        *,
        peers: PeerTransport,
        runs: EngineRuns,
        journal: Journal,
        sink: ResultSink,
        hints: HintOut | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.core = core
        self.cfg = core.cfg
        self._peers = peers
        self._runs = runs
        self._journal = journal
        self._sink = sink
        self._hints = hints
        self.clock = clock or RealClock()
        self._wake = asyncio.Event()
        #: Until when the ticker sleeps (-inf: it is running), so that only an input that
        #: brings the next deadline forward wakes it.
        self._sleeping_until = -math.inf
        self._loop_task: asyncio.Task[None] | None = None
        self._running: dict[str, asyncio.Task[None]] = {}
        self._calls: set[asyncio.Task[Any]] = set()
        #: Failed peer calls by method name ("assign", "steal", "complete", "load").
        self.peer_failures: Counter[str] = Counter()
        self._bad = RateLimitedLog(log, 60.0)

    @property
    def name(self) -> str:
        return self.core.name

    def now(self) -> float:
        return self.clock.now()

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._ticker(), name="tasks-tick")

    async def stop(self) -> None:
        # Runs first: a task finishing meanwhile would start more work.
        runs = list(self._running.values())
        for t in runs:
            t.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        pending = [*self._calls, *([self._loop_task] if self._loop_task else [])]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # ---- carrying out effects ---------------------------------------------------------------

    def carry_out(self, effects: list[Effect]) -> list[asyncio.Task[None]]:
        """Does what ``effects`` ask; returns the journal writes started (a caller that must
        not answer before the result is durable awaits them)."""
        journaled: list[asyncio.Task[None]] = []
        for effect in effects:
            if isinstance(effect, StartRun):
                task = effect.task
                self._running[task.task_id] = asyncio.create_task(self._run(task))
            elif isinstance(effect, SendAssign):
                self._spawn(self._assign(effect))
            elif isinstance(effect, SendSteal):
                self._spawn(self._steal(effect))
            elif isinstance(effect, SendComplete):
                self._spawn(self._complete(effect))
            elif isinstance(effect, SendReport):
                self._spawn(self._report(effect))
            elif isinstance(effect, PublishHint):
                if self._hints is not None:
                    self._hints.publish_load_hint(effect.hint, effect.urgent)
            elif isinstance(effect, JournalResult):
                journaled.append(self._spawn(self._journal_result(effect.result)))
            elif isinstance(effect, DeliverResult):
                if effect.inline:
                    self._runs.drop_decoded(effect.result.task_id)  # it may have run elsewhere
                self._sink.deliver(effect.result, effect.inline, self.now())
            elif isinstance(effect, TaskChanged):
                self._sink.changed(effect.event)
            elif isinstance(effect, ForgetResults):
                self._sink.forget(effect.task_ids, effect.horizon)
                self._spawn(self._journal.purge(effect.horizon))
        due = self.core.next_deadline()
        if due is not None and due < self._sleeping_until:
            self._wake.set()  # due sooner than the ticker sleeps: wake it
        return journaled

    async def _run(self, task: Task) -> None:
        try:
            result = await self._runs.run(task)
        finally:
            self._running.pop(task.task_id, None)
        self.carry_out(self.core.on_run_finished(task, result, self.now()))

    async def _assign(self, e: SendAssign) -> None:
        try:
            accepted = await self._peers.assign(e.node, e.task, self.cfg.peer_call_timeout_s)
        except P2PAgentError as err:
            self._peer_failed("assign", e.node, err)
            accepted = False
        task = e.task
        self.carry_out(
            self.core.on_assign_result(task.task_id, task.attempt, e.node, accepted, self.now())
        )

    async def _steal(self, e: SendSteal) -> None:
        tasks: list[Task] = []
        try:
            got = await self._peers.steal(
                e.victim, self.name, e.max_tasks, e.models, e.thief_speed, self.cfg.steal_timeout_s
            )
        except P2PAgentError as err:
            self._peer_failed("steal", e.victim, err)
            got = []
        for item in got:
            if isinstance(item, P2PAgentError):  # its origin's lease brings it back
                self._peer_failed("steal", e.victim, item)
            else:
                tasks.append(item)
        self.carry_out(self.core.on_steal_response(e.victim, tasks, self.now()))

    async def _complete(self, e: SendComplete) -> None:
        try:
            await self._peers.complete(e.origin, e.result, self.cfg.peer_call_timeout_s)
        except P2PAgentError as err:
            self._peer_failed("complete", e.origin, err)  # sent again by the core's tick
            return
        self.core.on_complete_ack(e.result.task_id, e.result.attempt)

    async def _report(self, e: SendReport) -> None:
        try:
            reply = await self._peers.load(e.peer, e.report, self.cfg.peer_call_timeout_s)
        except P2PAgentError as err:
            self._peer_failed("load", e.peer, err)
            return
        self.carry_out(self.core.on_load_report(reply, self.now()))

    def _peer_failed(self, call: str, peer: str, err: P2PAgentError) -> None:
        """The one handler of failed peer calls: each core input treats a failure as "no
        answer" (the core retries or re-queues by its own rules); here it is counted and
        logged, at most once a minute per peer and call."""
        self.peer_failures[call] += 1
        self._bad.warning(
            f"{call}/{peer}", "tasks: Peer.%s to %s failed (%s): %s",
            call.capitalize(), peer, err.code, err,
        )  # fmt: skip

    async def _journal_result(self, result: TaskResult) -> None:
        """Journals a result, retrying while the journal cannot take it (its writer process
        is being restarted, the disk is full): the lease table has already counted the task
        done, so this result is the only one there will be and must not be dropped. Gives up
        only when the journal is closed (the node is stopping; the task is re-queued at the
        next start)."""
        delay = 0.05
        while True:
            try:
                await self._journal.write(Finished(result.task_id, result_to_proto(result),
                                                   self.now()))  # fmt: skip
                break
            except (Unavailable, OSError) as e:
                if self._journal.closed:
                    raise
                log.warning("tasks: cannot journal the result of %s yet (%s); retrying in "
                            "%.2f s", result.task_id, e, delay)  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)
        self.carry_out(self.core.on_journaled(result.task_id, self.now()))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        return task

    # ---- the timer --------------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await self.clock.pause()
            while True:
                due = self.core.next_deadline()
                due = math.inf if due is None else due
                if due <= self.now():
                    break
                self._wake.clear()
                self._sleeping_until = due
                try:
                    await self.clock.wait(self._wake, due)
                finally:
                    self._sleeping_until = -math.inf
            self.carry_out(self.core.tick(self.now()))

"""The task capability of one node: the origin's public side (``Submit``, ``Infer``,
``Wait``, ``ListTasks``), the ``Peer`` handlers, and the wiring of the scheduler core to its
asyncio adapter.

Where things are decided: every scheduling rule (placement, re-queues, stealing, run-ahead,
results to retry) is in the pure :class:`~p2pagent.tasks.core.TaskNode`; its effects are
carried out by :class:`~p2pagent.tasks.adapter.TaskAdapter`. This module admits requests at
the door (bounds, quotas), journals each submission before answering
(``<data>/tasks.db``), and keeps the results delivered (journaled first) for ``Wait``
callers. Time for the cores is Unix seconds (deadlines travel between nodes).

Test-only hook: with ``P2PAGENT_TEST_RECORD_TASKS=DIR`` in its environment a node records its
core's inputs to ``DIR/<node>.jsonl`` for a replay test (``p2pagent/testing/task_log.py``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pagent._proto import agent_pb2, common_pb2, peer_pb2
from p2pagent.errors import (
    InvalidArgument,
    RemoteProtocolError,
    ResourceExhausted,
    Unavailable,
    quoted,
)
from p2pagent.logs import RateLimitedLog
from p2pagent.membership.hints import LoadHint
from p2pagent.membership.view import ALIVE, DEAD, LEFT, MemberView, PeerDirectory
from p2pagent.tasks.adapter import Clock, Journal, TaskAdapter
from p2pagent.tasks.admission import IdentityQuotas, check_inputs
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.core import TaskNode
from p2pagent.tasks.hinting import HintChannel, from_hint
from p2pagent.tasks.journal import Submitted, TaskJournal, Whole
from p2pagent.tasks.journal_hold import HoldingJournal
from p2pagent.tasks.leases import LeaseTable
from p2pagent.tasks.lifecycle import TaskEvent
from p2pagent.tasks.peers import GrpcPeerTransport, PeerTransport
from p2pagent.tasks.placement import make_placement
from p2pagent.tasks.queue import TaskQueue
from p2pagent.tasks.result_store import ResultStore, wait_remote
from p2pagent.tasks.results import TaskResult
from p2pagent.tasks.runs import Engine, EngineRuns
from p2pagent.tasks.spec import MAX_TASK_ID, Task
from p2pagent.tasks.wire import (
    checked_result,
    decode_report,
    encode_report,
    input_bytes,
    result_from_proto,
    result_to_proto,
    task_from_spec,
    task_list,
    task_to_spec,
)

if TYPE_CHECKING:
    from p2pagent.transport.channels import ChannelPool
    from p2pagent.transport.metrics import RpcMetrics

log = logging.getLogger(__name__)

#: The requests that submit a task (with or without waiting for its result).
SubmitLike = (
    agent_pb2.SubmitRequest | agent_pb2.SubmitAndWaitRequest | agent_pb2.SubmitStreamRequest
)

#: Test-only: the folder a node writes its scheduler core's inputs to (see the docstring).
RECORD_ENV = "P2PAGENT_TEST_RECORD_TASKS"


@dataclass
class Counters:
    submitted: int = 0


class TasksDriver:
    """The task capability of one node; a component."""

    def __init__(
        self,
        name: str,
        config: TasksConfig,
        *,
        capacity: int,
        engine: Engine,
        models: Callable[[], Collection[str]],
        data_dir: Path,
        prepare: Callable[[str, str], Awaitable[str]] | None = None,
        inline_bound: int = 1024,
        channels: ChannelPool | None,
        members: PeerDirectory,
        metrics: RpcMetrics,
        rng: random.Random | None = None,
        hints: HintChannel | None = None,
        peers: PeerTransport | None = None,
        core_type: type[TaskNode] = TaskNode,
        journal: Journal | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.cfg = config.validate()
        #: At most this many Agent.Infer calls wait here at once (back-pressure).
        self.inline_bound = inline_bound
        self._journal = journal or TaskJournal(data_dir / "tasks.db", self.cfg)
        #: Every write goes through this: it may hold a submission to commit with its result.
        self._writes = HoldingJournal(self._journal)
        self._members = members
        self._channels = channels
        self._metrics = metrics
        rng = rng or random.Random()
        #: Task ids: 64 random bits each, from a generator seeded by the OS (uuid4 made an
        #: object and a syscall per task; ids need to be unique, not unguessable: a caller
        #: may see only its own tasks' events through the ids it was given, and Wait is
        #: authorized by role, so guessing one reveals no more than ListTasks does).
        self._ids = random.Random()
        if os.environ.get(RECORD_ENV) and core_type is TaskNode:
            from p2pagent.testing.task_log import FileRecordingTaskNode  # a test asked for it

            core_type = FileRecordingTaskNode
        self.runs = EngineRuns(name, self.cfg, engine, prepare)
        #: The scheduler core (``core_type``: a test's recording one, for replay).
        self.core = core_type(
            name, self.cfg, placement=make_placement(self.cfg.placement), rng=rng,
            capacity=capacity, models=models, batching_measured=engine.batching_measured,
            full_batch_s=engine.full_batch_s,
        )  # fmt: skip
        if peers is None:
            if channels is None:
                raise ValueError("TasksDriver needs channels or a peer transport")
            peers = GrpcPeerTransport(members, channels)
        self.adapter = TaskAdapter(
            self.core, peers=peers, runs=self.runs, journal=self._writes, sink=self,
            hints=hints, clock=clock,
        )  # fmt: skip
        self._hints = hints
        self.counters = Counters()
        self.quotas = IdentityQuotas.from_config(config)
        #: Results delivered here (journaled first) and each waiting task's wake-up.
        self._results = ResultStore()
        self._submitted_at = self._results.submitted_at
        #: Agent.Infer calls waiting for their task: not journaled (nothing was acknowledged
        #: before the answer), delivered straight to the caller.
        self._inline: dict[str, asyncio.Future[TaskResult]] = {}
        #: Streamed Infers started at once that finished in this turn of the loop.
        self._finishing: list[str] = []
        #: The journal has been read back: until then a task of this origin may exist without
        #: this driver knowing it (the server takes calls before its components start).
        self.loaded = False
        self._bad = RateLimitedLog(log, 60.0)
        self._unsubscribe: list[Callable[[], None]] = []

    # ---- views ------------------------------------------------------------------------------

    @property
    def queue(self) -> TaskQueue:
        return self.core.queue

    @property
    def leases(self) -> LeaseTable:
        return self.core.leases

    @property
    def running(self) -> int:
        return self.core.running

    def backlog_s(self) -> float:
        return self.core.backlog_s()

    def peer_models(self) -> set[str]:
        """Models the live peers serve, from their last load hints (fresh or not: an idle
        peer stops gossiping)."""
        return {m for report in self.core.board.latest() for m in report.models}

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        rows = await self._journal.open()
        now = self.adapter.now()
        requeued = 0
        done = sorted((r for r in rows if r.result is not None), key=lambda r: r.finished or 0)
        for row in done:
            self.core.restore_result(row.spec.task_id, row.finished or row.submitted)
        for row in rows:
            self._submitted_at[row.spec.task_id] = (row.submitted, row.spec.model)
            if row.result is not None:
                self._results[row.spec.task_id] = result_from_proto(row.result)
                continue
            # Unfinished when we stopped: queue it again under a new attempt, so anything an
            # older attempt still produces counts as a duplicate of this one.
            task = task_from_spec(row.spec).next_attempt()
            self.adapter.carry_out(self.core.submit(task, now))
            requeued += 1
        if rows:
            log.info("tasks: journal has %d tasks; %d re-queued", len(rows), requeued)
        self._unsubscribe.append(self._members.subscribe(self._on_member))
        if self._hints is not None:
            self._unsubscribe.append(self._hints.subscribe_hints(self._on_hint))
        self.adapter.start()
        self.loaded = True

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        await self.adapter.stop()
        await self._writes.close()

    # ---- origin: submit, wait ---------------------------------------------------------------

    def _new_task(
        self,
        request: agent_pb2.SubmitRequest
        | agent_pb2.SubmitAndWaitRequest
        | agent_pb2.InferRequest
        | agent_pb2.SubmitStreamRequest
        | agent_pb2.InferStreamRequest,
        now: float,
        deadline_s: float | None,
    ) -> Task:
        """A task of this origin for ``request``, due ``deadline_s`` from now (None: never)."""
        return Task(
            task_id=f"{self.name}-{self._ids.getrandbits(64):016x}",
            origin=self.name,
            model=request.model,
            est_cost_s=self.runs.estimate(request.model, request.inputs),
            priority=request.priority,
            deadline=now + deadline_s if deadline_s is not None else 0.0,
            model_version=request.model_version,
            input_bytes=input_bytes(request.inputs),
            inputs=list(request.inputs),
        )

    async def submit(
        self,
        request: SubmitLike,
        owner: str = "",
        with_result: bool = False,
    ) -> str:
        """Journals and queues a task for caller identity ``owner`` (counted against its
        quotas until the result is delivered); returns the task's id once it is durable.
        ``with_result``: as for :meth:`accept`."""
        task_id, journaled = self.accept(request, owner, with_result)
        await self.journaled(task_id, journaled)
        return task_id

    def accept(
        self,
        request: SubmitLike,
        owner: str = "",
        with_result: bool = False,
    ) -> tuple[str, asyncio.Future[None]]:
        """The first half of :meth:`submit`: the task is admitted, its journal entry is being
        written and it is queued. Returns its id and the journal write, which
        :meth:`journaled` awaits before the id may be shown to anyone. ``with_result``: the
        caller waits for the result on the same call, so a short task's submission may be
        held to commit with its result (``tasks/journal_hold.py``)."""
        task, now = self._admitted(request, owner)
        return task.task_id, self._queued(task, now, with_result)

    def _admitted(self, request: SubmitLike, owner: str) -> tuple[Task, float]:
        """A new task for ``request``, checked and counted against ``owner``'s quotas."""
        if not request.model:
            raise InvalidArgument("SubmitRequest.model is empty: name the model to run")
        if not math.isfinite(request.deadline_s) or request.deadline_s < 0:
            raise InvalidArgument(
                f"deadline_s must be a finite number >= 0 (seconds from now; 0 = none), "
                f"got {request.deadline_s}"
            )
        if len(self.core.leases) >= self.cfg.max_queued:
            raise ResourceExhausted(
                f"{self.name} already tracks {len(self.core.leases)} unfinished tasks "
                f"(tasks.max_queued); wait for some results or submit to another node"
            )
        now = self.adapter.now()
        task = self._new_task(request, now, request.deadline_s or None)
        self.quotas.admit(owner, task.task_id, task.input_bytes, self.backlog_s(), now)
        return task, now

    def _queued(self, task: Task, now: float, with_result: bool) -> asyncio.Future[None]:
        """Journals an admitted task and queues it; returns its journal write."""
        # The task is queued (and may run) while its journal entry is being synced: the reply
        # waits for the sync, and its result cannot be shown before it, since results are
        # journaled after it in commit order. This hides the sync behind the execution.
        try:
            hold_s = self.cfg.journal_hold_s
            if not with_result or task.est_cost_s >= hold_s:
                hold_s = 0.0
            journaled = self._writes.hold(Submitted(task_to_spec(task), now), hold_s)
        except Unavailable as e:  # the journal is down: refused before anything happened
            self.quotas.release(task.task_id)
            raise self._not_journaled(e) from e
        self._submitted_at[task.task_id] = (now, task.model)
        self.counters.submitted += 1
        self.adapter.carry_out(self.core.submit(task, now))
        return journaled

    async def journaled(self, task_id: str, journaled: asyncio.Future[None]) -> None:
        """Waits until the task :meth:`accept` took is durable; raises Unavailable (and fails
        the task) when its journal entry could not be written."""
        try:
            await asyncio.shield(journaled)
        except asyncio.CancelledError:
            raise  # the caller hung up; the task is journaled anyway and keeps its course
        except Exception as e:
            # Not durable, so not accepted: the caller gets the error and never learns the id;
            # the task is failed here so that it does not linger or run.
            message = f"not journaled: {e}"
            now = self.adapter.now()
            self.adapter.carry_out(self.core.fail(task_id, "UNAVAILABLE", message, now))
            raise self._not_journaled(e) from e

    async def submit_and_wait(
        self, request: agent_pb2.SubmitAndWaitRequest, decoded: Any | None, owner: str = ""
    ) -> TaskResult | AsyncIterator[agent_pb2.TaskEvent]:
        """``Agent.SubmitAndWait``: submits a task for ``owner`` and follows it to its result
        (``decoded``: the request's inputs, already checked by the caller against the model
        this node serves under that name; None for a model it does not serve or a pinned
        version: such a task is always queued).

        A task that the core would start here at once (``TaskNode.start_now``, as for an
        Infer) and that is estimated under ``tasks.journal_hold_s`` runs in the caller's
        coroutine, with no lease, queue entry or adapter task, and is journaled once it has
        finished: its submission and its result in one write, one group commit. Its result
        is returned once both are durable (the call's one event); nothing about it is
        written or shown before, so a node that dies meanwhile acknowledged nothing (the call
        fails, as when a node dies before the fsync). Any other task is journaled and queued,
        and once its submission is durable its events are returned to follow (:meth:`wait`),
        as ``Submit`` then ``Wait`` would give them."""
        task, now = self._admitted(request, owner)
        short = task.est_cost_s < self.cfg.journal_hold_s
        if decoded is not None and short and self.core.start_now(task, now):
            result = await self._run_at_once(task, decoded, now)
            if result is not None:
                return result
            now = self.adapter.now()  # failed retryably: the scheduler tries it again
        journaled = self._queued(task, now, with_result=True)
        await self.journaled(task.task_id, journaled)
        return self.wait(task.task_id)

    async def _run_at_once(self, task: Task, decoded: Any, submitted: float) -> TaskResult | None:
        """Runs a task :meth:`submit_and_wait` started at once and journals it, submission
        and result together; returns its result once durable, or None when it failed
        with a retryable code (the caller queues it, as the lease table would re-queue it)."""
        try:
            result = await self.runs.run(task, decoded)
        except BaseException:  # the caller hung up: nothing was written or shown
            self.quotas.release(task.task_id)
            raise
        finally:
            self.adapter.carry_out(self.core.on_now_finished(task.task_id, self.adapter.now()))
        if not result.ok and result.error_code in self.cfg.retryable_codes:
            return None
        finished = self.adapter.now()
        # One row, without the inputs: nothing reads a finished task's inputs.
        whole = Whole(task_to_spec(task, False), submitted, result_to_proto(result), finished)
        try:
            durable = self._writes.write(whole)
        except Unavailable as e:
            self.quotas.release(task.task_id)
            raise self._not_journaled(e) from e
        recorded: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def record(done: asyncio.Future[None]) -> None:
            # In a callback, not after the await: a caller that hangs up now must not keep a
            # durable result from being served to Wait.
            self.quotas.release(task.task_id)
            error = Unavailable("the write was cancelled") if done.cancelled() else done.exception()
            if error is not None:
                if not recorded.done():
                    recorded.set_exception(self._not_journaled(error))
                return
            self._submitted_at[task.task_id] = (submitted, task.model)
            self._results[task.task_id] = result
            self.counters.submitted += 1
            self.adapter.carry_out(self.core.on_now_journaled(task.task_id, finished))
            if not recorded.done():
                recorded.set_result(None)

        durable.add_done_callback(record)
        await recorded
        return result

    def cancel(self, task_id: str, message: str) -> None:
        """Fails the task ``CANCELLED`` unless it has finished (a ``SubmitStream`` client
        cancelled it before it learned its id): a queued copy is dropped, a running one's
        result is ignored, and the failure is journaled like any result."""
        now = self.adapter.now()
        self.adapter.carry_out(self.core.fail(task_id, "CANCELLED", message, now))

    def _not_journaled(self, e: BaseException) -> Unavailable:
        return Unavailable(
            f"{self.name} could not journal the task ({e}); nothing was accepted, "
            "retry here later or submit to another node"
        )

    async def run_inline(
        self,
        request: agent_pb2.InferRequest | agent_pb2.InferStreamRequest,
        decoded: Any,
        deadline_s: float | None,
        owner: str = "",
        prepared: bool = False,
    ) -> TaskResult:
        """``Agent.Infer``: one task through the same queue, placement and stealing as a
        submitted one, but answered in the call: it is not journaled, since nothing was
        acknowledged before the answer (if this node dies the caller sees the call fail).
        ``decoded`` are the request's inputs, already checked by the caller; ``prepared``:
        the caller found the model served here at its newest version (``EngineRuns.run``).

        An Infer the core starts at once (``TaskNode.start_now``) runs in the caller's
        coroutine, with no lease, queue entry, adapter task or future to hand the result
        through. A caller that goes away cancels its engine request with it: nothing else
        waits for the result."""
        task, now = self._inline_task(request, deadline_s, owner)
        if not self.core.start_now(task, now):
            return await asyncio.shield(self._queue_inline(task, decoded, now))
        try:
            return await self.runs.run(task, decoded, prepared)
        finally:
            self._now_finished(task.task_id)

    def start_inline(
        self,
        request: agent_pb2.InferRequest | agent_pb2.InferStreamRequest,
        decoded: Any,
        deadline_s: float | None,
        owner: str = "",
        prepared: bool = False,
    ) -> asyncio.Future[TaskResult]:
        """:meth:`run_inline` for a caller that takes a future (``InferStream``), with no
        coroutine around it: one started at once is the engine request's own task (its
        bookkeeping a done callback; cancelling it stops the request); one queued is its
        result's future, shielded (a cancel drops the answer, not the task)."""
        task, now = self._inline_task(request, deadline_s, owner)
        if not self.core.start_now(task, now):
            return asyncio.shield(self._queue_inline(task, decoded, now))
        loop = asyncio.get_running_loop()
        run = loop.create_task(self.runs.run(task, decoded, prepared))
        task_id = task.task_id
        run.add_done_callback(lambda _: self._now_finishing(loop, task_id))
        return run

    def _inline_task(
        self,
        request: agent_pb2.InferRequest | agent_pb2.InferStreamRequest,
        deadline_s: float | None,
        owner: str,
    ) -> tuple[Task, float]:
        """An Infer's task, within the node's bounds and counted against ``owner``'s quotas."""
        if len(self._inline) >= self.inline_bound or len(self.core.leases) >= self.cfg.max_queued:
            raise ResourceExhausted(
                f"{self.name} is full: {len(self._inline)} Infer calls and "
                f"{len(self.core.leases)} tasks waiting (inference.max_queued, "
                "tasks.max_queued); retry later, call another node, or raise the bounds"
            )
        now = self.adapter.now()
        task = self._new_task(request, now, deadline_s)
        self.quotas.admit(owner, task.task_id, task.input_bytes, self.backlog_s())
        return task, now

    def _queue_inline(self, task: Task, decoded: Any, now: float) -> asyncio.Future[TaskResult]:
        """Submits an Infer the core did not start at once as an inline task; the future is
        its result, delivered here or by the peer that ran it. Await it shielded: a task
        whose caller went away still finishes (or expires), its result dropped on delivery."""
        future: asyncio.Future[TaskResult] = asyncio.get_running_loop().create_future()
        self._inline[task.task_id] = future
        self.runs.keep_decoded(task.task_id, decoded)
        retain = self.cfg.inline_retain_s
        self.adapter.carry_out(self.core.submit(task, now, inline=True, retain_s=retain))
        return future

    def _now_finished(self, task_id: str) -> None:
        """An Infer started at once is done (either way): its quota and its running slot."""
        self.quotas.release(task_id)
        self.adapter.carry_out(self.core.on_now_finished(task_id, self.adapter.now()))

    def _now_finishing(self, loop: asyncio.AbstractEventLoop, task_id: str) -> None:
        """:meth:`_now_finished` for a streamed Infer: its quota now, its running slot with
        the others that finish in this turn of the loop (a batch's rows all do), so that the
        core looks at what may start once per batch, not once per row. The slots are free
        before the stream writes these answers (its writer wakes after this callback)."""
        self.quotas.release(task_id)
        if not self._finishing:
            loop.call_soon(self._finished_now)
        self._finishing.append(task_id)

    def _finished_now(self) -> None:
        task_ids, self._finishing = tuple(self._finishing), []
        self.adapter.carry_out(self.core.on_now_finished_many(task_ids, self.adapter.now()))

    # ---- the result store (the adapter's ResultSink) ----------------------------------------

    def deliver(self, result: TaskResult, inline: bool, now: float) -> None:
        self.quotas.release(result.task_id)
        if inline:
            future = self._inline.pop(result.task_id, None)
            if future is not None and not future.done():
                future.set_result(result)
            return
        self._results[result.task_id] = result  # wakes that task's waiters

    def changed(self, event: TaskEvent) -> None:
        self._results.wake(event.task_id)

    def forget(self, task_ids: tuple[str, ...], horizon: float) -> None:
        self._results.forget(task_ids)

    def wait(self, task_id: str) -> AsyncIterator[agent_pb2.TaskEvent]:
        """The task's current state, then each change, ending with its result (a finished
        task's stream is its result alone); a task of another origin is followed there."""
        origin = task_id.rsplit("-", 1)[0]
        if len(task_id) > MAX_TASK_ID or origin != self.name:
            return wait_remote(self._members, self._channels, self.name, task_id)
        return self._results.follow(task_id, self.core.leases.lifecycle, self.name)

    def list_tasks(self, limit: int) -> agent_pb2.ListTasksResponse:
        return task_list(self.core, self._submitted_at, self._results.results, limit)

    # ---- membership -------------------------------------------------------------------------

    def _on_member(self, view: MemberView) -> None:
        if view.state in (DEAD, LEFT):
            self.adapter.carry_out(self.core.on_member(view.name, False, self.adapter.now()))
        elif view.state == ALIVE:
            self.adapter.carry_out(self.core.on_member(view.name, True, self.adapter.now()))

    def _on_hint(self, hint: LoadHint) -> None:
        """A peer's load hint, already judged believable and newer by membership."""
        self.adapter.carry_out(self.core.on_hint(from_hint(hint), self.adapter.now()))

    # ---- peer handlers ----------------------------------------------------------------------

    def handle_assign(self, req: peer_pb2.AssignRequest) -> peer_pb2.AssignResponse:
        task = task_from_spec(req.task)
        check_inputs(len(req.task.inputs), task.input_bytes, self.cfg)
        reason, effects = self.core.on_assign(task, self.adapter.now())
        self.adapter.carry_out(effects)
        return peer_pb2.AssignResponse(accepted=not reason, reason=reason)

    async def handle_complete(
        self, req: peer_pb2.CompleteRequest, caller: str
    ) -> peer_pb2.CompleteResponse:
        if req.executor != caller:
            raise InvalidArgument(
                f"result names executor {quoted(req.executor)} but the caller is {caller!r}"
            )
        result = result_from_proto(checked_result(req))
        accepted, effects = self.core.on_complete(result, self.adapter.now())
        # Answered once journaled (shielded: if the executor hangs up mid-call, the result
        # must still be journaled and delivered, since the lease table counted it as the one).
        journaled = self.adapter.carry_out(effects)
        if journaled:
            await asyncio.shield(asyncio.gather(*journaled))
        return peer_pb2.CompleteResponse(accepted=accepted)

    def handle_steal(
        self, req: peer_pb2.StealRequest, caller: str, time_left_s: float | None = None
    ) -> peer_pb2.StealResponse:
        """Hands over up to ``req.max_tasks`` queued tasks; ``time_left_s`` is the time left
        before the thief's deadline (None: none)."""
        if req.thief != caller:
            raise InvalidArgument(f"steal names thief {req.thief!r} but the caller is {caller!r}")
        if not (math.isfinite(req.thief_speed) and req.thief_speed >= 0):
            raise InvalidArgument(f"thief_speed must be finite and >= 0, got {req.thief_speed}")
        granted, effects = self.core.on_steal_request(
            req.thief,
            req.max_tasks,
            list(req.models),
            req.thief_speed,
            self.adapter.now(),
            time_left_s,
        )
        self.adapter.carry_out(effects)
        return peer_pb2.StealResponse(tasks=[task_to_spec(t) for t in granted])

    def handle_load(self, env: common_pb2.Envelope, caller: str) -> common_pb2.Envelope:
        try:
            report = decode_report(env)
        except RemoteProtocolError as e:
            self._metrics.dropped_payloads.labels("tasks_load").inc()
            self._bad.warning(caller, "tasks: bad load report from %s: %s", caller, e)
            raise InvalidArgument(str(e)) from None
        if report.node != caller:
            raise InvalidArgument(f"load report names {report.node!r} but the caller is {caller!r}")
        now = self.adapter.now()
        self.adapter.carry_out(self.core.on_load_report(report, now))
        return encode_report(self.core.report(now))

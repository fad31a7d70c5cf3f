"""The asyncio glue around the task cores: submissions in, tasks run on the inference engine,
stolen and assigned over the ``Peer`` service, results handed back to their origin once.

One node, three roles:

- **origin** of the tasks clients submit here (this module): journals each
  (``<data>/tasks.db``) before answering, tracks where it is with the :class:`LeaseTable`,
  delivers its one result to ``Wait`` callers (journaled first), re-queues it when its holder
  dies or goes silent;
- **executor** (:mod:`p2pagent.tasks.executor`): runs tasks from the node's
  :class:`TaskQueue` on the engine and hands each result to its origin, retried until
  acknowledged;
- **thief / victim** (:mod:`p2pagent.tasks.balancing`): publishes a load hint with the
  membership gossip when its load changed materially, and hears its peers' the same way; it
  reports to the origins of the tasks it holds each ``REPORT_INTERVAL_S`` over ``Peer.Load``
  (their leases); below the low watermark it asks a loaded peer for work (``Peer.Steal``); as
  a victim it hands over queued tasks it originated, each move checked in its own lease table
  before the answer leaves.

The ticker runs when something is due (``_next_wakeup``: a lease or task deadline, a report
owed to an origin, a result to retry, a steal worth trying, a hint to refresh) and otherwise
sleeps: an idle node does no periodic work at all. Changes to the queue wake it at most every
``TICK_S``; a chance to steal wakes it at once.

Time for the cores is Unix seconds (deadlines travel between nodes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from p2pagent._proto import agent_pb2, peer_pb2, peer_pb2_grpc
from p2pagent.errors import (
    InvalidArgument,
    NotFound,
    P2PAgentError,
    ResourceExhausted,
    Unavailable,
    quoted,
)
from p2pagent.membership.view import ALIVE, DEAD, LEFT, MemberView, PeerDirectory
from p2pagent.tasks.admission import IdentityQuotas, check_inputs
from p2pagent.tasks.balancing import Balancer
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.executor import CALL_TIMEOUT_S, Executor
from p2pagent.tasks.hinting import HintChannel
from p2pagent.tasks.journal import Finished, Submitted, TaskJournal
from p2pagent.tasks.leases import Action, Cancel, Deliver, LeaseTable, Requeue
from p2pagent.tasks.placement import make_placement
from p2pagent.tasks.queue import EntryState, TaskQueue
from p2pagent.tasks.spec import MAX_TASK_ID, Task
from p2pagent.tasks.wire import (
    checked_result,
    event_proto,
    input_bytes,
    result_event,
    task_from_spec,
    task_to_spec,
)

if TYPE_CHECKING:
    from p2pagent.inference.engine import InferenceEngine
    from p2pagent.transport.channels import ChannelPool
    from p2pagent.transport.metrics import RpcMetrics

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 0.25
TICK_S = 0.05
MIN_SLEEP_S = 0.001
COMPLETE_RETRY_S = 0.5
#: How long a finished Infer call's task is remembered (to drop a late duplicate result): it
#: cannot be waited for, and a busy node serves many of them.
INLINE_RETAIN_S = 60.0
#: How often delivered results older than ``tasks.done_retention_s`` are forgotten.
FORGET_INTERVAL_S = 10.0


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
        placement: str,
        capacity: int,
        engine: InferenceEngine,
        models: Callable[[], list[str]],
        data_dir: Path,
        prepare: Callable[[str, str], Awaitable[str]] | None = None,
        inline_bound: int = 1024,
        channels: ChannelPool,
        members: PeerDirectory,
        metrics: RpcMetrics,
        rng: random.Random | None = None,
        hints: HintChannel | None = None,
    ) -> None:
        self.name = name
        self.cfg = config.validate()
        #: At most this many Agent.Infer calls wait here at once (back-pressure).
        self.inline_bound = inline_bound
        self._models = models
        self._journal = TaskJournal(data_dir / "tasks.db")
        self._channels = channels
        self._members = members
        self._rng = rng or random.Random()
        self.queue = TaskQueue(name, self.cfg)
        self.leases = LeaseTable(name, self.cfg)
        self.placement = make_placement(placement)
        self.balancer = Balancer(
            name, self.cfg, queue=self.queue, leases=self.leases, models=models,
            stub=self._stub, metrics=metrics, rng=random.Random(self._rng.random()),
            apply=self._apply, kick=self._kick, wake=self._wake_ticker, spawn=self._spawn,
            hints=hints,
        )  # fmt: skip
        self._hints = hints
        self.counters = Counters()
        self.quotas = IdentityQuotas(config.max_queued_per_identity,
                                     config.max_queued_bytes_per_identity,
                                     config.submit_rate_per_identity)  # fmt: skip
        self.executor = Executor(
            name, self.cfg, queue=self.queue, engine=engine, capacity=capacity,
            prepare=prepare, stub=self._stub, on_started=self._on_started,
            on_local_result=self._on_complete, on_finished=self._kick,
        )  # fmt: skip
        self._results: dict[str, peer_pb2.CompleteRequest] = {}
        self._submitted_at: dict[str, tuple[float, str]] = {}
        #: Delivery time of each result held, oldest first: results are forgotten (here and
        #: in the journal) ``tasks.done_retention_s`` after delivery.
        self._finished_at: dict[str, float] = {}
        #: Agent.Infer calls waiting for their task: not journaled (nothing was acknowledged
        #: before the answer), delivered straight to the caller.
        self._inline: dict[str, asyncio.Future[peer_pb2.CompleteRequest]] = {}
        #: Set (and replaced) on every change a Wait caller may be waiting for.
        self._changed = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        #: The journal has been read back: until then a task of this origin may exist without
        #: this driver knowing it (the server takes calls before its components start).
        self.loaded = False
        self._calls: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        #: The ticker runs at once (a steal may be possible) rather than at its next due time.
        self._urgent = False
        #: The queue or the leases changed since the ticker last ran: it runs within TICK_S.
        self._dirty = False
        self._unsubscribe: Callable[[], None] | None = None
        self._unsubscribe_hints: Callable[[], None] | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        rows = await self._journal.open()
        now = time.time()
        requeued = 0
        done = sorted((r for r in rows if r.result is not None), key=lambda r: r.finished or 0)
        for row in done:
            self._finished_at[row.spec.task_id] = row.finished or row.submitted
        for row in rows:
            self._submitted_at[row.spec.task_id] = (row.submitted, row.spec.model)
            if row.result is not None:
                self._results[row.spec.task_id] = row.result
                continue
            # Unfinished when we stopped: queue it again under a new attempt, so anything an
            # older attempt still produces counts as a duplicate of this one.
            task = task_from_spec(row.spec).next_attempt()
            self._apply(self.leases.submit(task, now))
            self._place(task)
            requeued += 1
        if rows:
            log.info("tasks: journal has %d tasks; %d re-queued", len(rows), requeued)
        self._unsubscribe = self._members.subscribe(self._on_member)
        if self._hints is not None:
            self._unsubscribe_hints = self._hints.subscribe_hints(self.balancer.on_hint)
        self._loops = [asyncio.create_task(self._ticker(), name="tasks-tick")]
        self.loaded = True

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._unsubscribe_hints is not None:
            self._unsubscribe_hints()
        # The executor first: a task finishing meanwhile would start more driver work.
        await self.executor.stop()
        for t in [*self._loops, *self._calls]:
            t.cancel()
        await asyncio.gather(*self._loops, *self._calls, return_exceptions=True)
        await self._journal.close()

    # ---- views ------------------------------------------------------------------------------

    @property
    def running(self) -> int:
        return self.executor.running

    def backlog_s(self) -> float:
        return self.queue.queued_cost_s()

    # ---- origin: submit, wait ---------------------------------------------------------------

    def _new_task(
        self,
        request: agent_pb2.SubmitRequest | agent_pb2.InferRequest,
        now: float,
        deadline_s: float | None,
    ) -> Task:
        """A task of this origin for ``request``, due ``deadline_s`` from now (None: never)."""
        return Task(
            task_id=f"{self.name}-{uuid.uuid4().hex[:16]}",
            origin=self.name,
            model=request.model,
            est_cost_s=self.executor.estimate(request.model, request.inputs),
            priority=request.priority,
            deadline=now + deadline_s if deadline_s is not None else 0.0,
            model_version=request.model_version,
            input_bytes=input_bytes(request.inputs),
            inputs=list(request.inputs),
        )

    async def submit(self, request: agent_pb2.SubmitRequest, owner: str = "") -> str:
        """Journals and queues a task for caller identity ``owner`` (counted against its
        quotas until the result is delivered); returns the task's id."""
        if not request.model:
            raise InvalidArgument("SubmitRequest.model is empty: name the model to run")
        if not math.isfinite(request.deadline_s) or request.deadline_s < 0:
            raise InvalidArgument(
                f"deadline_s must be a finite number >= 0 (seconds from now; 0 = none), "
                f"got {request.deadline_s}"
            )
        if len(self.leases) >= self.cfg.max_queued:
            raise ResourceExhausted(
                f"{self.name} already tracks {len(self.leases)} unfinished tasks "
                f"(tasks.max_queued); wait for some results or submit to another node"
            )
        now = time.time()
        task = self._new_task(request, now, request.deadline_s or None)
        self.quotas.admit(owner, task.task_id, task.input_bytes, self.backlog_s(), now)
        # The task is queued (and may run) while its journal entry is being synced: the reply
        # waits for the sync, and its result cannot be shown before it, since results are
        # journaled after it in commit order. This hides the sync behind the execution.
        try:
            journaled = self._journal.write(Submitted(task_to_spec(task), now))
        except Unavailable as e:  # the journal is down: refused before anything happened
            self.quotas.release(task.task_id)
            raise self._not_journaled(e) from e
        self._submitted_at[task.task_id] = (now, task.model)
        self.counters.submitted += 1
        self._apply(self.leases.submit(task, now))
        self._place(task)
        try:
            await asyncio.shield(journaled)
        except asyncio.CancelledError:
            raise  # the caller hung up; the task is journaled anyway and keeps its course
        except Exception as e:
            # Not durable, so not accepted: the caller gets the error and never learns the id;
            # the task is failed here so that it does not linger or run.
            self._apply(self.leases.fail(task.task_id, "UNAVAILABLE", f"not journaled: {e}", now))
            raise self._not_journaled(e) from e
        return task.task_id

    def _not_journaled(self, e: Exception) -> Unavailable:
        return Unavailable(
            f"{self.name} could not journal the task ({e}); nothing was accepted, "
            "retry here later or submit to another node"
        )

    async def run_inline(
        self,
        request: agent_pb2.InferRequest,
        decoded: Any,
        deadline_s: float | None,
        owner: str = "",
    ) -> peer_pb2.CompleteRequest:
        """``Agent.Infer``: one task through the same queue, placement and stealing as a
        submitted one, but answered in the call: it is not journaled, since nothing was
        acknowledged before the answer (if this node dies the caller sees the call fail).
        ``decoded`` are the request's inputs, already checked by the caller."""
        if len(self._inline) >= self.inline_bound or len(self.leases) >= self.cfg.max_queued:
            raise ResourceExhausted(
                f"{self.name} is full: {len(self._inline)} Infer calls and {len(self.leases)} "
                "tasks waiting (inference.max_queued, tasks.max_queued); retry later, call "
                "another node, or raise the bounds"
            )
        now = time.time()
        task = self._new_task(request, now, deadline_s)
        self.quotas.admit(owner, task.task_id, task.input_bytes, self.backlog_s())
        future: asyncio.Future[peer_pb2.CompleteRequest] = (
            asyncio.get_running_loop().create_future()
        )
        self._inline[task.task_id] = future
        self.executor.keep_decoded(task.task_id, decoded)
        self._apply(self.leases.submit(task, now, retain_s=INLINE_RETAIN_S))
        self._place(task)
        # If the caller goes away, the task still finishes (or expires) and its result is
        # dropped on delivery; the entry stays until then so that it is not journaled.
        return await asyncio.shield(future)

    async def wait(self, task_id: str) -> AsyncIterator[agent_pb2.TaskEvent]:
        """The task's current state, then each change, ending with its result (a finished
        task's stream is its result alone). Current state rather than the whole history: a
        caller wants to know where its task is, and each message costs a send."""
        origin = task_id.rsplit("-", 1)[0]
        if len(task_id) > MAX_TASK_ID or origin != self.name:
            async for event in self._wait_remote(origin, task_id):
                yield event
            return
        after = -1  # nothing sent yet: send the latest event only
        while True:
            changed = self._changed
            result = self._results.get(task_id)
            if result is not None:
                yield result_event(task_id, result)
                return
            if task_id not in self.leases.lifecycle:
                raise NotFound(
                    f"no task {quoted(task_id)} on {self.name} (unknown, or forgotten after "
                    "tasks.done_retention_s); check the id"
                )
            events = self.leases.lifecycle.events(task_id, max(after, 0))
            for e in events[-1:] if after < 0 else events:
                after = e.seq
                if not e.state.terminal:  # the terminal one is sent with the result
                    yield event_proto(e)
            await changed.wait()

    async def _wait_remote(self, origin: str, task_id: str) -> AsyncIterator[agent_pb2.TaskEvent]:
        member = None if len(task_id) > MAX_TASK_ID else self._members.member(origin)
        if member is None or not member.address:
            raise NotFound(
                f"no task {quoted(task_id)}: {quoted(origin)}, the node its id names, is not "
                "a known member; check the id"
            )
        from p2pagent._proto import agent_pb2_grpc

        stub = agent_pb2_grpc.AgentStub(self._channels.get(member.address))
        try:
            async for event in stub.Wait(agent_pb2.WaitRequest(task_id=task_id)):
                yield event
        except grpc.aio.AioRpcError as e:
            from p2pagent.tasks.wire import error_from_code

            raise error_from_code(e.code().name, f"via {origin}: {e.details()}") from None

    def list_tasks(self, limit: int) -> agent_pb2.ListTasksResponse:
        infos: list[agent_pb2.TaskInfo] = []
        newest = sorted(self._submitted_at.items(), key=lambda kv: kv[1][0], reverse=True)
        for task_id, (submitted, model) in newest[:limit]:
            result = self._results.get(task_id)
            where = self.leases.where(task_id)
            if result is not None:
                state, node = ("done" if result.ok else "failed"), result.executor
            elif where is not None:
                state, node = ("running" if where.running else "queued"), where.holder
            else:
                state, node = "unknown", ""
            infos.append(
                agent_pb2.TaskInfo(
                    task_id=task_id,
                    model=model,
                    state=state,
                    node=node,
                    submitted_unix=submitted,
                )
            )
        return agent_pb2.ListTasksResponse(
            tasks=infos,
            queue_length=self.queue.n_queued,
            running=self.executor.running,
            completed=self.executor.completed,
            stolen_in=self.balancer.stolen_in,
            stolen_out=self.balancer.stolen_out,
        )

    # ---- placement and execution ------------------------------------------------------------

    def _place(self, task: Task, front: bool = False) -> None:
        now = time.time()
        if self.placement.always_local:
            dst = self.name  # no load report to build: it walks the whole queue
        else:
            dst = self.placement.choose(
                task, self.balancer.report(), self.balancer.board.fresh(now), now, self._rng
            )
        if dst == self.name:
            idle = self.queue.queued_cost_s() < self.cfg.min_victim_backlog_s
            self.queue.push(task, now, front=front)
            queued_s = self.queue.queued_cost_s()
            if (idle and queued_s >= self.cfg.min_victim_backlog_s) or (
                self.balancer.hint_policy.grew(queued_s)
            ):
                # Just became worth robbing, or much more so: tell the peers now (an urgent
                # hint), not within TICK_S, so that idle ones share a burst from its start.
                self._wake_ticker()
            self._kick()
            return
        self._apply(self.leases.on_assigned(task.task_id, task.attempt, dst, now))
        self._spawn(self._assign(dst, task))

    async def _assign(self, dst: str, task: Task) -> None:
        ok = False
        try:
            resp = await self._stub(dst).Assign(
                peer_pb2.AssignRequest(task=task_to_spec(task)), timeout=CALL_TIMEOUT_S
            )
            ok = resp.accepted
        except (grpc.aio.AioRpcError, NotFound):
            ok = False
        if not ok:
            self._apply(self.leases.on_assign_failed(task.task_id, task.attempt, dst, time.time()))

    def _kick(self) -> None:
        self.executor.fill()
        # The ticker's steal decision runs now, but only when a steal is possible; otherwise
        # within TICK_S (hints, deadlines): on a node serving alone it would run per task.
        if self._stealing and self.balancer.may_steal_soon(time.time()):
            self._wake_ticker()
        elif not self._dirty:
            self._dirty = True
            self._wake.set()

    @property
    def _stealing(self) -> bool:
        return self.placement.name == "work_stealing"

    def _wake_ticker(self) -> None:
        self._urgent = True
        self._wake.set()

    def _on_started(self, task: Task) -> None:
        if task.origin == self.name:
            self._apply(self.leases.on_started(task.task_id, task.attempt, self.name, time.time()))

    async def _on_complete(self, r: peer_pb2.CompleteRequest) -> bool:
        """Origin side of a result (local or ``Peer.Complete``); True when accepted."""
        out = self.leases.on_complete(
            r.task_id, r.attempt, r.executor, r.ok, time.time(),
            outputs=r, error_code=r.error_code, error_message=r.error_message,
            compute_s=r.compute_s,
        )  # fmt: skip
        await self._apply_async(out.actions)
        return out.accepted

    # ---- applying the cores' actions --------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        if any(isinstance(a, Deliver) for a in actions):
            self._spawn(self._apply_async(actions))
            return
        self._apply_sync(actions)

    def _apply_sync(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Requeue):
                self._place(action.task, front=True)
            elif (
                isinstance(action, Cancel)
                and action.node == self.name
                and self.queue.state(action.task_id) is EntryState.QUEUED
            ):
                self.queue.remove(action.task_id)
        if actions:
            self._notify()
            self._kick()

    async def _apply_async(self, actions: list[Action]) -> None:
        """Like ``_apply``, but a result is journaled before anyone sees it."""
        for action in actions:
            if isinstance(action, Deliver):
                self.quotas.release(action.task_id)
                result = action.outputs
                if not isinstance(result, peer_pb2.CompleteRequest):
                    result = peer_pb2.CompleteRequest(
                        task_id=action.task_id, executor=action.executor, attempt=action.attempt,
                        ok=action.ok, error_code=action.error_code,
                        error_message=action.error_message,
                    )  # fmt: skip
                inline = self._inline.pop(action.task_id, None)
                if inline is not None:
                    self.executor.drop_decoded(action.task_id)  # it ran elsewhere
                    if not inline.done():
                        inline.set_result(result)
                    continue
                finished = time.time()
                await self._journal_result(Finished(action.task_id, result, finished))
                self._results[action.task_id] = result
                self._finished_at[action.task_id] = finished
        self._apply_sync([a for a in actions if not isinstance(a, Deliver)])
        self._notify()

    async def _journal_result(self, finished: Finished) -> None:
        """Journals a result, retrying while the journal cannot take it (its writer process
        is being restarted, the disk is full): the lease table has already counted the task
        done, so this result is the only one there will be and must not be dropped. Gives up
        only when the journal is closed (the node is stopping; the executor, or the task's
        re-queue at the next start, has it then)."""
        delay = 0.05
        while True:
            try:
                await self._journal.write(finished)
                return
            except (Unavailable, OSError) as e:
                if self._journal.closed:
                    raise
                log.warning("tasks: cannot journal the result of %s yet (%s); retrying in "
                            "%.2f s", finished.task_id, e, delay)  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    # ---- periodic work ----------------------------------------------------------------------

    async def _forget_old_results(self, now: float) -> None:
        """Results delivered more than ``done_retention_s`` ago leave memory and the journal:
        a daemon that runs for weeks must not keep every result it ever delivered."""
        horizon = now - self.cfg.done_retention_s
        old: list[str] = []
        for task_id, finished in self._finished_at.items():  # oldest first
            if finished > horizon:
                break
            old.append(task_id)
        if not old:
            return
        for task_id in old:
            del self._finished_at[task_id]
            self._results.pop(task_id, None)
            self._submitted_at.pop(task_id, None)
        await self._journal.purge(horizon)

    async def _ticker(self) -> None:
        next_report = next_retry = 0.0
        forget_every = min(FORGET_INTERVAL_S, max(0.1, self.cfg.done_retention_s / 2))
        next_forget = time.time() + forget_every
        while True:
            now = time.time()
            self._urgent = self._dirty = False
            if now >= next_forget:
                next_forget = now + forget_every
                self._spawn(self._forget_old_results(now))
            self._apply(self.leases.tick(now))
            for expired in self.queue.expire(now):
                self._expired(expired.task, expired.error_message)
                self._dirty = True  # its result may need retrying: look again soon
            origins = self.balancer.origins_held()
            if origins and now >= next_report:
                # Holders report to origins (lease renewals, hand-over confirmations); the
                # rest of the mesh hears of our load from hints.
                next_report = now + REPORT_INTERVAL_S
                for origin in origins:
                    self.balancer.send_report(origin)
            self.balancer.publish_if_changed(now)
            if self.executor.unacked and now >= next_retry:
                next_retry = now + COMPLETE_RETRY_S
                self.executor.retry_unacked()
            if self._stealing and not self.executor.saturated:
                self.balancer.maybe_steal(now)
            due = [self.leases.next_deadline(), self.queue.next_deadline()]
            due.append(next_forget if self._finished_at else None)
            due.append(next_report if origins else None)
            due.append(max(next_retry, now + TICK_S) if self.executor.unacked else None)
            due.append(self.balancer.hint_policy.refresh_at())
            if self._stealing and not self.executor.saturated and self.balancer.may_steal_soon(now):
                # A peer claims stealable work and the policy declined just now (a steal in
                # flight, a back-off): look again when it could decide otherwise. A node
                # running at capacity is woken by its next finished task instead.
                due.append(max(self.balancer.policy.next_wakeup() or 0.0, now + TICK_S))
            earliest = min((t for t in due if t is not None), default=math.inf)
            await self._sleep_until(earliest, now)

    async def _sleep_until(self, due: float, ran_at: float) -> None:
        """Sleeps until ``due``, or an urgent wake, or TICK_S after ``ran_at`` once dirty;
        always yields to the loop, even when something is already due (whatever was due ran
        in the pass before; a due time in the past must not make the ticker spin)."""
        await asyncio.sleep(MIN_SLEEP_S)
        while not self._urgent:
            at = min(due, ran_at + TICK_S) if self._dirty else due
            left = at - time.time()
            if left <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left if math.isfinite(left) else None):
                    await self._wake.wait()

    def _expired(self, task: Task, message: str) -> None:
        result = peer_pb2.CompleteRequest(
            task_id=task.task_id, executor=self.name, attempt=task.attempt, ok=False,
            error_code="DEADLINE_EXCEEDED", error_message=message,
        )  # fmt: skip
        self._spawn(self.executor.hand_back(task, result))

    def _on_member(self, view: MemberView) -> None:
        now = time.time()
        if view.name == self.name:
            return
        if view.state in (DEAD, LEFT):
            self.balancer.forget(view.name)
            self._apply(self.leases.on_member_dead(view.name, now))
        elif view.state == ALIVE:
            self.leases.renew_node(view.name, now)

    def _stub(self, node: str) -> peer_pb2_grpc.PeerAsyncStub:
        member = self._members.member(node)
        if member is None or not member.address or not member.reachable:
            raise NotFound(f"{node} is not a reachable member")
        return peer_pb2_grpc.PeerStub(self._channels.get(member.address))

    # ---- peer handlers ----------------------------------------------------------------------

    def handle_assign(self, req: peer_pb2.AssignRequest) -> peer_pb2.AssignResponse:
        task = task_from_spec(req.task)
        check_inputs(len(req.task.inputs), task.input_bytes, self.cfg)
        try:
            self.queue.push(task, time.time())
        except P2PAgentError as e:
            return peer_pb2.AssignResponse(accepted=False, reason=str(e))
        self._kick()
        return peer_pb2.AssignResponse(accepted=True)

    async def handle_complete(
        self, req: peer_pb2.CompleteRequest, caller: str
    ) -> peer_pb2.CompleteResponse:
        if req.executor != caller:
            raise InvalidArgument(
                f"result names executor {quoted(req.executor)} but the caller is {caller!r}"
            )
        # Shielded: if the executor hangs up mid-call, the result must still be journaled and
        # delivered, since the lease table has already counted it as the one result.
        task = asyncio.create_task(self._on_complete(checked_result(req)))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        return peer_pb2.CompleteResponse(accepted=await asyncio.shield(task))

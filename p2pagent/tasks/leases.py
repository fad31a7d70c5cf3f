"""The origin's lease table: where each of its tasks is, and the one result it delivers.

The origin of a task (the node that accepted it from a client) is the only authority on who
owns it. Each task has exactly one *holder* at a time in the origin's view — the origin itself
(queued or running locally) or one remote node, under a lease — and every transfer of
ownership is a single step here, checked against the current holder and attempt:

- ``on_assigned``: the origin placed the task on a peer (``Peer.Assign``).
- ``on_stolen``: a victim handed it to a thief. By default only the origin is ever a victim
  (``TasksConfig.steal_foreign``), so this is a local, atomic step taken before the
  ``StealResponse`` leaves; a report that does not match the current holder and attempt is
  refused and the victim must keep the task.
- re-queue: the holder died (``on_member_dead``), went silent past its lease (``tick``), or
  never confirmed a hand-over that was lost in transit (``on_report``). The task comes back to
  the origin's queue with ``attempt + 1``; whatever an older attempt still produces is stale.

Delivery is exactly once, by task id: the first ``ok`` result (of any attempt — a falsely
suspected executor's result is as good as anyone's) is delivered and the id is remembered for
``done_retention_s``. A later result is a duplicate (``accepted=False`` on the wire); the same
executor retrying the ``Complete`` it already got through is told ``accepted=True`` again, so
it stops retrying. A failure from a superseded attempt is ignored — a newer attempt is out.

Holder liveness comes from three sources, cheapest first: the holder's gossiped load reports
(which list the foreign tasks it holds, so a hand-over lost in transit is caught within
``handoff_grace_s``), membership ``alive`` (``renew_node``), and explicit ``renew`` heartbeats.

Pure: methods return lists of actions (``Requeue``, ``Deliver``, ``Cancel``, ``TaskEvent``).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from enum import Enum

from p2pagent.errors import AlreadyExists
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.lifecycle import TaskEvent, TaskLifecycle, TaskState
from p2pagent.tasks.load import LoadReport
from p2pagent.tasks.results import Outputs, TaskResult
from p2pagent.tasks.spec import Task


@dataclass(frozen=True)
class Requeue:
    """Put ``task`` (already at its new attempt) back in the origin's local queue."""

    task: Task
    reason: str


@dataclass(frozen=True)
class Deliver:
    """The task's one and only result: hand it to Wait callers and the journal."""

    result: TaskResult

    @property
    def task_id(self) -> str:
        return self.result.task_id

    @property
    def ok(self) -> bool:
        return self.result.ok

    @property
    def executor(self) -> str:
        return self.result.executor

    @property
    def attempt(self) -> int:
        return self.result.attempt

    @property
    def outputs(self) -> Outputs:
        return self.result.outputs


@dataclass(frozen=True)
class Cancel:
    """Best effort: ``node`` may drop its copy of the task (it is done or superseded)."""

    task_id: str
    attempt: int
    node: str


Action = Requeue | Deliver | Cancel | TaskEvent


class CompleteKind(Enum):
    DELIVERED = "delivered"
    #: The executor retried a Complete that was already delivered: ack it again.
    RETRY = "retry"
    #: Another result for a task already delivered: discard.
    DUPLICATE = "duplicate"
    #: A failure from an attempt that is no longer current: discard.
    STALE = "stale"
    #: A retryable failure of the current attempt: the task was re-queued.
    REQUEUED = "requeued"
    #: No such task (never ours, or forgotten after retention): discard.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CompleteOutcome:
    kind: CompleteKind
    actions: list[Action]

    @property
    def accepted(self) -> bool:
        """What ``CompleteResponse.accepted`` says: False tells the executor it lost."""
        return self.kind in (CompleteKind.DELIVERED, CompleteKind.RETRY, CompleteKind.REQUEUED)


@dataclass
class _Lease:
    task: Task
    holder: str
    running: bool
    lease_until: float
    #: Since when the holder has not confirmed holding the task in a load report (set at
    #: hand-over, cleared by a report listing it); None when confirmed.
    unconfirmed_since: float | None


@dataclass(frozen=True)
class _Done:
    executor: str
    attempt: int
    at: float
    #: When the entry (and the task's events) are forgotten.
    expires: float = math.inf


@dataclass(frozen=True)
class Location:
    """Where the origin believes a task is."""

    holder: str
    attempt: int
    running: bool
    lease_until: float


class LeaseTable:
    """Ownership and results of the tasks originated by ``node``."""

    def __init__(self, node: str, cfg: TasksConfig | None = None) -> None:
        self.node = node
        self.cfg = cfg or TasksConfig()
        self.lifecycle = TaskLifecycle()
        self._leases: dict[str, _Lease] = {}
        self._done: dict[str, _Done] = {}
        #: (expiry, task id) of every done entry: the tick forgets expired ones without
        #: walking all of them (an Infer call makes one, so there can be very many).
        self._expiry: list[tuple[float, str]] = []
        #: Retention of done tasks submitted with their own (``submit(retain_s=...)``).
        self._retain: dict[str, float] = {}
        #: Leases taken back from a holder that died or let the lease expire (for metrics).
        self.leases_lost = 0

    # ---- views ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._leases)

    def where(self, task_id: str) -> Location | None:
        """The current holder of an unfinished task, or None (unknown or finished)."""
        lease = self._leases.get(task_id)
        if lease is None:
            return None
        return Location(lease.holder, lease.task.attempt, lease.running, lease.lease_until)

    def is_done(self, task_id: str) -> bool:
        return task_id in self._done

    def held_by(self, node: str) -> list[str]:
        return [tid for tid, lease in self._leases.items() if lease.holder == node]

    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do (a lease or task deadline, a finished task
        to forget), for the timer."""
        times = [lease.lease_until for lease in self._leases.values()]
        times += [lease.task.deadline for lease in self._leases.values() if lease.task.deadline]
        times += [self._expiry[0][0]] if self._expiry else []
        finite = [t for t in times if math.isfinite(t)]
        return min(finite) if finite else None

    # ---- local inputs --------------------------------------------------------------------

    def submit(self, task: Task, now: float, retain_s: float | None = None) -> list[Action]:
        """Registers a task a client gave us; it starts queued here. Once done, it is
        remembered (to drop late duplicates, and for its events) for ``retain_s``, by default
        ``done_retention_s``."""
        if task.task_id in self._leases or task.task_id in self._done:
            raise AlreadyExists(
                f"task id {task.task_id} is already in use on {self.node}; pick a fresh id"
            )
        self._leases[task.task_id] = _Lease(task, self.node, False, math.inf, None)
        if retain_s is not None:
            self._retain[task.task_id] = retain_s
        return self._event(task.task_id, TaskState.QUEUED, self.node, task.attempt, now)

    def on_started(self, task_id: str, attempt: int, node: str, now: float) -> list[Action]:
        """The holder began running the task (locally: the engine took it)."""
        lease = self._current(task_id, attempt, node)
        if lease is None or lease.running:
            return []
        lease.running = True
        return self._event(task_id, TaskState.RUNNING, node, attempt, now)

    def on_assigned(self, task_id: str, attempt: int, to: str, now: float) -> list[Action]:
        """The origin is handing the task, queued here, to ``to`` (placement)."""
        return self._move(task_id, attempt, self.node, to, now) or []

    def on_assign_failed(self, task_id: str, attempt: int, node: str, now: float) -> list[Action]:
        """``node`` refused the Assign or could not be reached: take the task back.

        The attempt is bumped even so: if the call timed out, ``node`` may hold a copy.
        """
        lease = self._current(task_id, attempt, node)
        if lease is None:
            return []
        return self._requeue(lease, now, f"{node} did not accept the task")

    def on_stolen(
        self, task_id: str, attempt: int, from_node: str, to_node: str, now: float
    ) -> tuple[bool, list[Action]]:
        """Moves ownership ``from_node`` -> ``to_node``; False (nothing changes) unless the
        task is unfinished, queued (not running) at ``from_node`` and at ``attempt``."""
        actions = self._move(task_id, attempt, from_node, to_node, now)
        return (actions is not None), (actions or [])

    def fail(self, task_id: str, code: str, message: str, now: float) -> list[Action]:
        """Fails an unfinished task for a reason found here (e.g. its deadline in our queue)."""
        lease = self._leases.get(task_id)
        if lease is None:
            return []
        return self._finish(lease, False, self.node, lease.task.attempt, now, (), code, message)

    # ---- remote inputs -------------------------------------------------------------------

    def on_complete(
        self,
        task_id: str,
        attempt: int,
        executor: str,
        ok: bool,
        now: float,
        outputs: Outputs = (),
        error_code: str = "",
        error_message: str = "",
        compute_s: float = 0.0,
    ) -> CompleteOutcome:
        """A result arrived (``Peer.Complete`` or local); returns what to do and to answer."""
        done = self._done.get(task_id)
        if done is not None:
            same = (done.executor, done.attempt) == (executor, attempt)
            return CompleteOutcome(CompleteKind.RETRY if same else CompleteKind.DUPLICATE, [])
        lease = self._leases.get(task_id)
        if lease is None:
            return CompleteOutcome(CompleteKind.UNKNOWN, [])
        current = lease.task.attempt == attempt and lease.holder == executor
        if not ok:
            if not current:
                return CompleteOutcome(CompleteKind.STALE, [])
            if error_code in self.cfg.retryable_codes:
                reason = f"{executor} failed it with {error_code}: {error_message}"
                actions = self._requeue(lease, now, reason)
                kind = CompleteKind.REQUEUED if task_id in self._leases else CompleteKind.DELIVERED
                return CompleteOutcome(kind, actions)
        actions = self._finish(
            lease, ok, executor, attempt, now, outputs, error_code, error_message, compute_s
        )
        return CompleteOutcome(CompleteKind.DELIVERED, actions)

    def on_report(self, report: LoadReport, now: float) -> list[Action]:
        """A load report from ``report.node``: renews the leases of the tasks it lists and
        re-queues tasks handed to it that it has not listed for ``handoff_grace_s``."""
        node = report.node
        if node == self.node:
            return []
        actions: list[Action] = []
        for lease in [lease for lease in self._leases.values() if lease.holder == node]:
            tid = lease.task.task_id
            if tid in report.held:
                lease.lease_until = now + self.cfg.lease_s
                lease.unconfirmed_since = None
                if tid in report.running_ids:
                    actions += self.on_started(tid, lease.task.attempt, node, now)
                continue
            if lease.unconfirmed_since is None:
                # Finished, with the Complete still on its way, or lost: give it the grace.
                lease.unconfirmed_since = now
            elif now - lease.unconfirmed_since >= self.cfg.handoff_grace_s:
                actions += self._requeue(lease, now, f"{node} does not hold the task")
        return actions

    def renew(self, task_id: str, attempt: int, node: str, now: float) -> None:
        """An explicit heartbeat from the holder of one task."""
        lease = self._current(task_id, attempt, node)
        if lease is not None:
            lease.lease_until = max(lease.lease_until, now + self.cfg.lease_s)

    def renew_node(self, node: str, now: float) -> None:
        """Membership says ``node`` is alive: extend every lease it holds."""
        for lease in self._leases.values():
            if lease.holder == node and node != self.node:
                lease.lease_until = max(lease.lease_until, now + self.cfg.lease_s)

    def on_member_dead(self, node: str, now: float) -> list[Action]:
        """Membership declared ``node`` dead: re-queue everything it held."""
        actions: list[Action] = []
        if node == self.node:
            return actions
        for lease in [lease for lease in self._leases.values() if lease.holder == node]:
            actions += self._requeue(lease, now, f"{node} was declared dead")
        return actions

    def tick(self, now: float) -> list[Action]:
        """Expires leases and task deadlines; forgets old finished tasks."""
        actions: list[Action] = []
        for lease in list(self._leases.values()):
            if lease.task.expired(now):
                message = (
                    f"task {lease.task.task_id} passed its deadline on {lease.holder}; "
                    "give it a later deadline or submit it when the cluster is less busy"
                )
                # Decided here, so the executor of record is the origin: a late Complete
                # from the holder is then a duplicate, not a retry of this failure.
                actions += self._finish(
                    lease,
                    False,
                    self.node,
                    lease.task.attempt,
                    now,
                    (),
                    "DEADLINE_EXCEEDED",
                    message,
                )
            elif lease.holder != self.node and lease.lease_until <= now:
                actions += self._requeue(lease, now, f"lease on {lease.holder} expired")
        while self._expiry and self._expiry[0][0] < now:
            expires, tid = heapq.heappop(self._expiry)
            done = self._done.get(tid)
            if done is not None and done.expires == expires:
                del self._done[tid]
                self.lifecycle.forget(tid)
        return actions

    # ---- internals -----------------------------------------------------------------------

    def _current(self, task_id: str, attempt: int, holder: str) -> _Lease | None:
        lease = self._leases.get(task_id)
        if lease is None or lease.task.attempt != attempt or lease.holder != holder:
            return None
        return lease

    def _move(
        self, task_id: str, attempt: int, from_node: str, to_node: str, now: float
    ) -> list[Action] | None:
        lease = self._current(task_id, attempt, from_node)
        if lease is None or lease.running or from_node == to_node:
            return None
        lease.holder = to_node
        lease.running = False
        local = to_node == self.node
        lease.lease_until = math.inf if local else now + self.cfg.lease_s
        lease.unconfirmed_since = None if local else now
        return self._event(task_id, TaskState.QUEUED, to_node, attempt, now)

    def _requeue(self, lease: _Lease, now: float, reason: str) -> list[Action]:
        old = lease.task
        self.leases_lost += 1
        if old.attempt + 1 >= self.cfg.max_attempts:
            message = (
                f"task {old.task_id} gave up after {old.attempt + 1} attempts (last: {reason}); "
                "check the health of the nodes serving model " + repr(old.model)
            )
            # _finish cancels the remote copy, if any.
            return self._finish(
                lease, False, self.node, old.attempt, now, (), "UNAVAILABLE", message
            )
        actions: list[Action] = []
        if lease.holder != self.node:
            actions.append(Cancel(old.task_id, old.attempt, lease.holder))
        task = old.next_attempt()
        lease.task = task
        lease.holder = self.node
        lease.running = False
        lease.lease_until = math.inf
        lease.unconfirmed_since = None
        actions.append(Requeue(task, reason))
        return actions + self._event(task.task_id, TaskState.QUEUED, self.node, task.attempt, now)

    def _finish(
        self,
        lease: _Lease,
        ok: bool,
        executor: str,
        attempt: int,
        now: float,
        outputs: Outputs,
        code: str,
        message: str,
        compute_s: float = 0.0,
    ) -> list[Action]:
        tid = lease.task.task_id
        del self._leases[tid]
        expires = now + self._retain.pop(tid, self.cfg.done_retention_s)
        self._done[tid] = _Done(executor, attempt, now, expires)
        heapq.heappush(self._expiry, (expires, tid))
        actions: list[Action] = []
        # A copy still queued or running somewhere else is now useless.
        if lease.holder != executor or lease.task.attempt != attempt:
            actions.append(Cancel(tid, lease.task.attempt, lease.holder))
        result = TaskResult(tid, attempt, executor, ok, outputs, code, message, compute_s)
        actions.append(Deliver(result))
        state = TaskState.DONE if ok else TaskState.FAILED
        return actions + self._event(tid, state, executor, attempt, now, code, message)

    def _event(
        self,
        task_id: str,
        state: TaskState,
        node: str,
        attempt: int,
        now: float,
        code: str = "",
        message: str = "",
    ) -> list[Action]:
        event = self.lifecycle.record(task_id, state, node, attempt, now, code, message)
        return [event] if event is not None else []

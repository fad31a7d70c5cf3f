"""The scheduler of one node, as a pure core: every decision about where tasks go and when.

One node plays three roles, all here:

- **origin** of the tasks submitted to it: places each (``tasks/placement.py``), tracks
  where it is in the :class:`LeaseTable`, re-queues it when its holder dies, goes silent or
  fails it retryably, and delivers its one result (journaled first, unless an ``Agent.Infer``
  call waits for it in place);
- **executor**: starts queued tasks while fewer than ``capacity`` run and less than
  ``tasks.run_ahead_s`` of estimated work is started (work handed to the engine cannot be
  stolen any more; where no peer could steal it, up to a full batch behind the running one:
  ``tasks/run_ahead.py``), and hands each result to its origin, again until acknowledged;
- **thief / victim**: publishes a load hint when its load changed materially
  (``tasks/hinting.py``), hears its peers' the same way, reports to the origins of the tasks
  it holds every ``tasks.report_interval_s``, asks a loaded peer for work below the low
  watermark (``tasks/steal.py``), and hands over queued tasks it originated, each move checked
  in its own lease table first (``tasks/handover.py``).

Shape of ``membership/swim.py``: inputs are methods taking ``now`` (Unix seconds: deadlines
travel between nodes); each returns the :mod:`~p2pagent.tasks.effects` to carry out; the
driver calls :meth:`TaskNode.tick` at :meth:`TaskNode.next_deadline`. An idle node has no
deadline at all. A change to the queue brings the periodic work (hint, steal decision) within
``tasks.tick_s``; a chance to steal brings it at once. Randomness comes from the ``rng``
passed in; what the node serves, whether the engine has measured batching and what a full
batch of a model costs are read through the callables passed in (views, not I/O). The
asyncio adapter (``tasks/adapter.py``) and the simulator (``sim/tasks.py``) drive this same
class.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from p2pagent.errors import P2PAgentError
from p2pagent.tasks.config import TasksConfig
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
from p2pagent.tasks.handover import hand_over
from p2pagent.tasks.hinting import HintPolicy, to_hint
from p2pagent.tasks.leases import Action, Cancel, Deliver, LeaseTable, Requeue
from p2pagent.tasks.lifecycle import TaskEvent
from p2pagent.tasks.load import LoadBoard, LoadReport, make_report
from p2pagent.tasks.placement import Placement
from p2pagent.tasks.queue import EntryState, TaskQueue
from p2pagent.tasks.results import TaskResult, failure
from p2pagent.tasks.run_ahead import EXPLORE_STARTED, batch_room, own_share_s
from p2pagent.tasks.spec import Task
from p2pagent.tasks.steal import StealPolicy


@dataclass
class TaskStats:
    """Counters for Status, ListTasks, metrics and the simulator."""

    completed: int = 0
    stolen_in: int = 0
    stolen_out: int = 0
    #: Steal requests that came too close to the thief's deadline to be answered.
    late_steals: int = 0


class TaskNode:
    """The scheduler of node ``name``; pure (see the module docstring)."""

    def __init__(
        self,
        name: str,
        cfg: TasksConfig,
        *,
        placement: Placement,
        rng: random.Random,
        capacity: int,
        models: Callable[[], Collection[str]],
        batching_measured: Callable[[str], bool] = lambda model: True,
        full_batch_s: Callable[[str], float | None] = lambda model: None,
        speed: float = 1.0,
        stealing: bool | None = None,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.capacity = max(1, capacity)
        #: Estimates are seconds of this node's engine time (measured per row, batching
        #: included), so the daemon drains them one after another at speed 1; the simulator
        #: gives each node its own speed.
        self.speed = speed
        self.placement = placement
        #: Whether idle nodes steal: work_stealing placement, unless told otherwise.
        self.stealing = placement.name == "work_stealing" if stealing is None else stealing
        self._rng = rng
        self._models = models
        self._batching_measured = batching_measured
        self._full_batch_s = full_batch_s
        self.queue = TaskQueue(name, cfg, speed)
        self.leases = LeaseTable(name, cfg)
        self.board = LoadBoard(cfg)
        self.steal = StealPolicy(name, random.Random(rng.random()), cfg, speed)
        self.hints = HintPolicy(cfg)
        self.stats = TaskStats()
        self._running: dict[str, Task] = {}
        #: Results handed to a remote origin and not yet acknowledged: (task, attempt) -> ...
        self._unacked: dict[tuple[str, int], tuple[str, TaskResult]] = {}
        #: Tasks an Agent.Infer call waits for in place: delivered unjournaled.
        self._inline: set[str] = set()
        #: Results chosen by the lease table, waiting for the journal.
        self._journaling: dict[str, TaskResult] = {}
        #: Delivery time of each result held, oldest first.
        self._finished_at: dict[str, float] = {}
        self._seq = 0
        #: Newest ``Peer.Load`` report seq from each peer: older ones are stale.
        self._report_seq: dict[str, int] = {}
        self._next_report = 0.0
        self._next_retry = 0.0
        self._next_forget: float | None = None
        self._last_tick = -math.inf
        #: When the next tick is due for its own reasons (computed by each tick). The first is
        #: due at once: it publishes our first hint (peers learn which models we serve).
        self._due: float | None = -math.inf
        #: The tick runs at once (a steal may be possible) rather than at its due time.
        self._urgent = False
        #: The queue or the leases changed since the last tick: it runs within tick_s.
        self._dirty = False
        self._out: list[Effect] = []

    # ---- views ------------------------------------------------------------------------------

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def saturated(self) -> bool:
        """Twice ``capacity`` running: stealing more now would only queue it here."""
        return len(self._running) >= self.capacity * 2

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    def backlog_s(self) -> float:
        return self.queue.queued_cost_s()

    def report(self, now: float) -> LoadReport:
        """Our load now, as ``Peer.Load`` and hints carry it (an input: it is numbered)."""
        return self._report(now)

    def _report(self, now: float) -> LoadReport:
        self._seq += 1
        return make_report(
            self.name, self._seq, self.queue.queued(), self._running.values(), 1, self.speed,
            self._models(), self.queue.stealable(now),
        )  # fmt: skip

    def origins_held(self) -> set[str]:
        """Other origins whose tasks are queued or running here: they want our reports."""
        held = (*self.queue.queued(), *self._running.values())
        return {t.origin for t in held if t.origin != self.name}

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must run next (``-inf``: at once); None when nothing is due."""
        if self._urgent:
            return -math.inf
        due = self._due
        if self._dirty:
            soon = self._last_tick + self.cfg.tick_s
            due = soon if due is None else min(due, soon)
        return due

    # ---- origin inputs ----------------------------------------------------------------------

    def submit(
        self, task: Task, now: float, *, inline: bool = False, retain_s: float | None = None
    ) -> list[Effect]:
        """A task of this origin: a client's (journaled by the driver first), one read back
        from the journal (at its next attempt), or an ``Agent.Infer`` call's (``inline``)."""
        if inline:
            self._inline.add(task.task_id)
        self._apply(self.leases.submit(task, now, retain_s=retain_s), now)
        self._place(task, now)
        return self._flush()

    def restore_result(self, task_id: str, finished: float) -> None:
        """A result read back from the journal, delivered at ``finished`` (oldest first)."""
        self._finished_at[task_id] = finished

    def fail(self, task_id: str, code: str, message: str, now: float) -> list[Effect]:
        """Fails an unfinished task for a reason found by the driver (not journaled, or
        cancelled by its client); a copy still queued here is dropped with it."""
        actions = self.leases.fail(task_id, code, message, now)
        if actions and self.queue.state(task_id) is EntryState.QUEUED:
            self.queue.remove(task_id)
        self._apply(actions, now)
        return self._flush()

    def on_complete(self, result: TaskResult, now: float) -> tuple[bool, list[Effect]]:
        """A result for one of our tasks (``Peer.Complete``); True: acknowledged."""
        accepted = self._on_result(result, now)
        return accepted, self._flush()

    def on_journaled(self, task_id: str, now: float) -> list[Effect]:
        """The journal holds the result of ``task_id``: it may be seen now."""
        result = self._journaling.pop(task_id, None)
        if result is not None:
            self._finished_at[task_id] = now
            self._out.append(DeliverResult(result, inline=False))
        return self._flush()

    def on_assign_result(
        self, task_id: str, attempt: int, node: str, accepted: bool, now: float
    ) -> list[Effect]:
        """``node`` answered our ``Peer.Assign`` (False: refused, or never answered)."""
        if not accepted:
            self._apply(self.leases.on_assign_failed(task_id, attempt, node, now), now)
        return self._flush()

    def on_load_report(self, report: LoadReport, now: float) -> list[Effect]:
        """A ``Peer.Load`` report (from a node holding our tasks, or answering us): renews
        the leases of what it holds. Peers' load for stealing comes from hints instead (the
        two are numbered apart, so they are kept apart)."""
        if report.seq > self._report_seq.get(report.node, -1):
            self._report_seq[report.node] = report.seq
            self._apply(self.leases.on_report(report, now), now)
        return self._flush()

    def on_member(self, node: str, alive: bool, now: float) -> list[Effect]:
        """Membership says ``node`` is alive, or dead / gone (its tasks are re-queued)."""
        if node == self.name:
            return []
        if alive:
            self.leases.renew_node(node, now)
            return []
        self.board.forget(node)
        self._report_seq.pop(node, None)
        self.steal.on_member_dead(node)
        self._apply(self.leases.on_member_dead(node, now), now)
        return self._flush()

    # ---- executor inputs --------------------------------------------------------------------

    def on_assign(self, task: Task, now: float) -> tuple[str, list[Effect]]:
        """A peer placed ``task`` here (``Peer.Assign``); the refusal's reason, or ''."""
        try:
            self.queue.push(task, now)
        except P2PAgentError as e:
            return str(e), []
        self._changed(now)
        return "", self._flush()

    def on_run_finished(self, task: Task, result: TaskResult, now: float) -> list[Effect]:
        """The engine is done with ``task`` (either way)."""
        if self._running.pop(task.task_id, None) is not None:
            self.stats.completed += 1
        if self.queue.state(task.task_id) is EntryState.RUNNING:
            self.queue.finish(task.task_id)  # not if it expired meanwhile
        self._hand_back(task, result, now)
        self._changed(now)
        return self._flush()

    def start_now(self, task: Task, now: float) -> bool:
        """An ``Agent.Infer`` of this origin that may run here at once, without a lease, a
        queue entry or a placement: nothing is queued, so it passes no one, and the engine is
        under its run-ahead (the scheduler itself would start it at once, here: work
        stealing places every task at its origin first). Counted as running while it runs,
        so our load, our hints and the run-ahead of other work see it. False: submit it."""
        if (
            not self.placement.always_local
            or self.queue.head() is not None
            or len(self._running) >= self.capacity
            or not self._may_start_another(now, task.model)
        ):
            return False
        self._running[task.task_id] = task
        self._dirty = True  # our load changed: the periodic work looks within tick_s
        return True

    def on_now_finished(self, task_id: str, now: float) -> list[Effect]:
        """The engine is done with a task :meth:`start_now` started (either way; its caller
        has its answer): what waited behind it may start."""
        if self._running.pop(task_id, None) is not None:
            self.stats.completed += 1
        self._changed(now)
        return self._flush()

    def on_now_finished_many(self, task_ids: tuple[str, ...], now: float) -> list[Effect]:
        """:meth:`on_now_finished` for several tasks at once (the rows of one engine batch
        finish together): one look at what may start, not one per task."""
        for task_id in task_ids:
            if self._running.pop(task_id, None) is not None:
                self.stats.completed += 1
        self._changed(now)
        return self._flush()

    def on_now_journaled(self, task_id: str, now: float) -> list[Effect]:
        """The result of a task :meth:`start_now` started was journaled with its submission
        (``SubmitAndWait``): kept, and forgotten after ``done_retention_s``, like any other."""
        if not self._finished_at:
            self._dirty = True  # the tick schedules the forgetting
        self._finished_at[task_id] = now
        return self._flush()

    def on_complete_ack(self, task_id: str, attempt: int) -> None:
        """The origin answered our ``Peer.Complete`` (accepted or a duplicate): stop."""
        self._unacked.pop((task_id, attempt), None)

    # ---- balancing inputs -------------------------------------------------------------------

    def on_hint(self, report: LoadReport, now: float) -> list[Effect]:
        """A peer's load hint, already judged believable and newer by membership."""
        if self.board.update(report, now) and report.backlog_s >= self.cfg.min_victim_backlog_s:
            self._urgent = True  # a peer has work to steal: consider it now
        return []

    def on_steal_request(
        self,
        thief: str,
        max_tasks: int,
        models: Sequence[str],
        thief_speed: float,
        now: float,
        time_left_s: float | None = None,
    ) -> tuple[list[Task], list[Effect]]:
        """Hands over up to ``max_tasks`` queued tasks; ``time_left_s`` is the time left
        before the thief's deadline (None: none)."""
        if time_left_s is not None and time_left_s < self.cfg.steal_answer_margin_s:
            self.stats.late_steals += 1
            return [], []
        others = self._peers_speed(models, besides=thief)
        granted, actions = hand_over(
            self.queue, self.leases, self.name, thief, max_tasks, models, thief_speed or 1.0, now,
            others,
        )  # fmt: skip
        self._apply(actions, now)
        self.stats.stolen_out += len(granted)
        return granted, self._flush()

    def on_steal_response(self, victim: str, tasks: Sequence[Task], now: float) -> list[Effect]:
        """What ``victim`` handed over (nothing: empty, refused or failed)."""
        got = 0
        for task in tasks:
            try:
                self.queue.push(task, now, stolen=True)
            except P2PAgentError:  # this one only: its origin's lease brings it back
                continue
            got += 1
        self.stats.stolen_in += got
        self.steal.on_steal_result(victim, got, now)
        self._changed(now)
        return self._flush()

    # ---- time -------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Effect]:
        """The periodic work that is due: leases and deadlines, reports to origins, our hint,
        result retries, forgetting old results, and the steal decision."""
        self._urgent = self._dirty = False
        self._last_tick = now
        cfg = self.cfg
        every = min(cfg.forget_interval_s, max(0.1, cfg.done_retention_s / 2))
        if self._next_forget is None:
            self._next_forget = now + every
        elif now >= self._next_forget:
            self._next_forget = now + every
            self._forget(now)
        self._apply(self.leases.tick(now), now)
        for expired in self.queue.expire(now):
            task = expired.task
            result = failure(
                task.task_id, task.attempt, self.name, "DEADLINE_EXCEEDED", expired.error_message
            )
            self._hand_back(task, result, now)
            self._dirty = True  # its result may need retrying: look again soon
        origins = self.origins_held()
        if origins and now >= self._next_report:
            # Holders report to origins (lease renewals, hand-over confirmations); the rest
            # of the mesh hears of our load from hints.
            self._next_report = now + cfg.report_interval_s
            report = self._report(now)
            self._out.extend(SendReport(origin, report) for origin in sorted(origins))
        self._publish_if_changed(now)
        if self._unacked and now >= self._next_retry:
            self._next_retry = now + cfg.complete_retry_s
            self._out.extend(SendComplete(o, r) for o, r in self._unacked.values())
        if self.stealing and not self.saturated:
            self._maybe_steal(now)
        due = [self.leases.next_deadline(), self.queue.next_deadline()]
        due.append(self._next_forget if self._finished_at else None)
        due.append(self._next_report if origins else None)
        due.append(max(self._next_retry, now + cfg.tick_s) if self._unacked else None)
        due.append(self.hints.refresh_at())
        if self.stealing and not self.saturated and self._may_steal_soon(now):
            # A peer claims stealable work and the policy declined just now (a steal in
            # flight, a back-off): look again when it could decide otherwise. A node running
            # at capacity is woken by its next finished task instead.
            due.append(max(self.steal.next_wakeup() or 0.0, now + cfg.tick_s))
        self._due = min((t for t in due if t is not None), default=None)
        return self._flush()

    # ---- internals --------------------------------------------------------------------------

    def _flush(self) -> list[Effect]:
        out, self._out = self._out, []
        return out

    def _place(self, task: Task, now: float, front: bool = False) -> None:
        if self.placement.always_local:
            dst = self.name  # no load report to build: it walks the whole queue
        else:
            peers = self.board.fresh(now)
            dst = self.placement.choose(task, self._report(now), peers, now, self._rng)
        if dst != self.name:
            self._apply(self.leases.on_assigned(task.task_id, task.attempt, dst, now), now)
            self._out.append(SendAssign(dst, task))
            return
        idle = self.queue.queued_cost_s() < self.cfg.min_victim_backlog_s
        self.queue.push(task, now, front=front)
        queued_s = self.queue.queued_cost_s()
        if (idle and queued_s >= self.cfg.min_victim_backlog_s) or self.hints.grew(queued_s):
            # Just became worth robbing, or much more so: tell the peers now (an urgent hint),
            # not within tick_s, so that idle ones share a burst from its start.
            self._urgent = True
        self._changed(now)

    def _changed(self, now: float) -> None:
        """The queue or the leases changed: start what may start, and have the periodic
        work look again (at once when a steal is possible: on a node serving alone it
        would otherwise run per task)."""
        self._fill(now)
        if self.stealing and self._may_steal_soon(now):
            self._urgent = True
        else:
            self._dirty = True

    def _fill(self, now: float) -> None:
        while len(self._running) < self.capacity:
            head = self.queue.head()
            if head is None or not self._may_start_another(now, head.model):
                break
            task = self.queue.pop_for_execution()
            if task is None:
                break
            # Counted as running before the origin's bookkeeping runs: it fills again,
            # which must already see this one.
            self._running[task.task_id] = task
            self._out.append(StartRun(task))
            if task.origin == self.name:
                self._apply(self.leases.on_started(task.task_id, task.attempt, self.name, now), now)

    def _may_start_another(self, now: float, model: str) -> bool:
        """Whether a task of ``model`` may start (``tasks/run_ahead.py``): under
        ``run_ahead_s`` of estimated work (one always runs); or, where ``model``'s work can
        only run here, under a running batch and a full one behind it; or fewer than
        EXPLORE_STARTED running while a running task's model has not shown what batching
        saves and the work started is below this node's share of what it holds."""
        started = self._running.values()
        started_s = sum(t.est_cost_s for t in started)
        if not started or started_s < self.cfg.run_ahead_s:
            return True
        if self._only_here(model) and batch_room(started, model, self._full_batch_s(model)):
            return True
        if len(started) >= EXPLORE_STARTED or all(
            self._batching_measured(t.model) for t in started
        ):
            return False
        return started_s < self._own_share_s(started_s, now) - 1e-9  # sums of estimates

    def _own_share_s(self, started_s: float, now: float) -> float:
        """:func:`own_share_s` of the work held here (all of it when peers do not steal)."""
        head = self.queue.head()
        if head is None or not self.stealing:
            return math.inf
        movable = sum(t.est_cost_s for t in self.queue.stealable(now))
        fixed = started_s + self.queue.queued_cost_s() - movable
        peers = self._peers_speed((head.model,))
        return own_share_s(fixed, movable, self.speed, peers)

    def _only_here(self, model: str) -> bool:
        """Whether queued work of ``model`` will run here whatever happens: placement keeps
        tasks at their origin (local, work stealing) and no peer could steal them (the mesh
        does not steal: placement is one setting for the whole mesh; or no live peer serves
        the model). Under least-loaded placement, starting it would hide it from the load
        that placement weighs (running work counts per slot: measured 1.02 -> 1.13x ideal)."""
        if not self.placement.always_local:
            return False
        return not self.stealing or self._peers_speed((model,)) == 0

    def _peers_speed(self, models: Sequence[str], besides: str = "") -> float:
        """Summed speed of the peers (but ``besides``) serving any of ``models`` (``models``
        empty: any peer). Every peer not declared dead counts, however old its last hint: an
        idle peer gossips once and then stays quiet, and its speed and models do not age."""
        wanted = set(models)
        return sum(
            r.speed
            for r in self.board.latest()
            if r.node not in (self.name, besides) and (not wanted or wanted & r.models)
        )

    def _hand_back(self, task: Task, result: TaskResult, now: float) -> None:
        if task.origin == self.name:
            self._on_result(result, now)
            return
        self._unacked[(task.task_id, task.attempt)] = (task.origin, result)
        self._out.append(SendComplete(task.origin, result))

    def _on_result(self, r: TaskResult, now: float) -> bool:
        out = self.leases.on_complete(
            r.task_id, r.attempt, r.executor, r.ok, now, outputs=r.outputs,
            error_code=r.error_code, error_message=r.error_message, compute_s=r.compute_s,
        )  # fmt: skip
        self._apply(out.actions, now)
        return out.accepted

    def _apply(self, actions: list[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, Requeue):
                self._place(action.task, now, front=True)
            elif isinstance(action, Deliver):
                self._deliver(action.result)
            elif isinstance(action, Cancel):
                # A superseded copy here: dropped unless already running (its result is then
                # a duplicate). Remote copies finish: the wire has no cancel, the origin dedupes.
                if (
                    action.node == self.name
                    and self.queue.state(action.task_id) is EntryState.QUEUED
                ):
                    self.queue.remove(action.task_id)
            elif isinstance(action, TaskEvent):
                self._out.append(TaskChanged(action))
        if actions:
            self._changed(now)

    def _deliver(self, result: TaskResult) -> None:
        if result.task_id in self._inline:
            self._inline.discard(result.task_id)
            self._out.append(DeliverResult(result, inline=True))
            return
        self._journaling[result.task_id] = result
        self._out.append(JournalResult(result))

    def _forget(self, now: float) -> None:
        """Results delivered more than ``done_retention_s`` ago are forgotten: a daemon that
        runs for weeks must not keep every result it ever delivered."""
        horizon = now - self.cfg.done_retention_s
        old: list[str] = []
        for task_id, finished in self._finished_at.items():  # oldest first
            if finished > horizon:
                break
            old.append(task_id)
        if old:
            for task_id in old:
                del self._finished_at[task_id]
            self._out.append(ForgetResults(tuple(old), horizon))

    def _publish_if_changed(self, now: float) -> None:
        hint = to_hint(self._report(now))
        publish, urgent = self.hints.decide(hint, now)
        if publish:
            self._out.append(PublishHint(hint, urgent))

    def _waiting_s(self) -> float:
        """Seconds of work here that the engine is not yet on, as the thief's low-water check
        sees it: the queue, and what was started beyond the oldest running task and
        ``run_ahead_s`` (the engine's pipeline; more is started only while it measures
        batching, and that work waits as queued work does). Without the second part a thief
        that started the tasks it stole at once looked empty and stole again, ending with
        more than its share."""
        started = [t.est_cost_s for t in self._running.values()]
        pipeline = max(self.cfg.run_ahead_s, started[0]) if started else 0.0
        ahead = max(0.0, sum(started) - pipeline)
        return (self.queue.queued_cost_s() + ahead) / self.speed

    def _may_steal_soon(self, now: float) -> bool:
        """Cheap pre-check of the steal policy: our queue is low and some peer has work."""
        return self._waiting_s() < self.cfg.steal_low_water_s and (
            self.board.any_backlog(now, self.cfg.min_victim_backlog_s)
        )

    def _maybe_steal(self, now: float) -> None:
        attempt = self.steal.decide(
            now, self._waiting_s(), list(self._models()), self.board.fresh(now)
        )
        if attempt is not None:
            self._out.append(
                SendSteal(attempt.victim, attempt.max_tasks, attempt.models, attempt.thief_speed)
            )

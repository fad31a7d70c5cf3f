"""The local task queue of one node: priority, then first-in first-out.

A task here is either ``queued`` (waiting) or ``running`` (handed to the inference engine).
Work stealing takes from the *cold* end — lowest priority, newest — because those are the
tasks this node would run last, so moving them costs its own clients the least and gains the
thief the most. Running tasks are never handed over (their compute is already under way), and
a task that arrived here by a steal is never handed over again: a task moves at most once,
which is what stops the thrashing Dask users see when the same task bounces between workers.

Pure: no clock, no I/O. The driver calls ``expire(now)`` at ``next_deadline()``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from enum import Enum

from p2pagent.errors import AlreadyExists, NotFound, ResourceExhausted
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.spec import Task


class EntryState(Enum):
    QUEUED = "queued"
    RUNNING = "running"


@dataclass
class _Entry:
    task: Task
    seq: int
    state: EntryState
    #: Arrived by a steal: never handed over again.
    stolen: bool
    enqueued_at: float

    @property
    def key(self) -> tuple[int, int]:
        # Sort order of the waiting line: higher priority first, then older first.
        return (-self.task.priority, self.seq)


@dataclass(frozen=True)
class Expired:
    """A task whose deadline passed here; the driver fails it with DeadlineExceeded."""

    task: Task
    #: It was already running: the driver should cancel it in the engine if it can.
    was_running: bool
    error_code: str = "DEADLINE_EXCEEDED"

    @property
    def error_message(self) -> str:
        where = "while running" if self.was_running else "while queued"
        return (
            f"task {self.task.task_id} passed its deadline {where}; "
            "give it a later deadline or submit it when the cluster is less busy"
        )


def transfer_cost_s(input_bytes: int, cfg: TasksConfig) -> float:
    """Estimated seconds to ship a task's inputs to another node."""
    return input_bytes / cfg.bandwidth_bytes_per_s + cfg.transfer_latency_s


def worth_moving(task: Task, thief_speed: float, cfg: TasksConfig, wait_s: float = 0.0) -> bool:
    """Whether handing ``task`` to a thief pays for shipping its inputs.

    Dask's rule: yes when its compute dwarfs the move (compute measured on the thief,
    ``est_cost_s / thief_speed``; with the default ratio of 10 a steal adds at most 10 % to the
    task's own run time). Also yes when it would wait here ``wait_s`` at least that many times
    as long as the move takes: an idle thief starts it long before this node could, even if
    the move costs as much as the compute (a big input to a quick model), and the margin covers
    stale estimates.
    """
    transfer_s = transfer_cost_s(task.input_bytes, cfg)
    compute_s = task.est_cost_s / max(thief_speed, 1e-9)
    return max(compute_s, wait_s) >= cfg.steal_cost_ratio * transfer_s


def steal_share(
    n_queued: int, thief_speed: float, own_speed: float, others_speed: float = 0.0
) -> int:
    """Most tasks one steal may take: the thief's fair share of the queue, at most half.

    Half (rounded up, so a lone waiting task can still move to an idle node while this one is
    busy) keeps the victim from being emptied by one thief while others are idle; a slower
    thief gets proportionally less. ``others_speed``: the summed speed of the other peers that
    serve the work (they may come for it too). The victim counts its queue as it is now, so
    a thief that judged its share from an older hint cannot take the part of the end of a
    burst that the other nodes would run in parallel (stolen tasks cannot move again).
    """
    if n_queued <= 0:
        return 0
    total = thief_speed + own_speed + max(0.0, others_speed)
    fraction = min(0.5, thief_speed / max(total, 1e-9))
    return max(1, math.ceil(n_queued * fraction))


class TaskQueue:
    """Queued and running tasks on one node."""

    def __init__(self, node: str, cfg: TasksConfig | None = None, speed: float = 1.0) -> None:
        self.node = node
        self.cfg = cfg or TasksConfig()
        #: This node's relative speed, for sharing work with a thief fairly.
        self.speed = speed
        self._entries: dict[str, _Entry] = {}
        # Waiting line of queued entries sorted by key; running ones are not in it.
        self._line: list[_Entry] = []
        #: Sum of the line's estimates, kept as entries come and go (placement, reports and
        #: the steal policy ask for it on every submission and tick).
        self._line_cost = 0.0
        self._seq = 0
        self._front_seq = 0

    # ---- views ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._entries

    @property
    def n_queued(self) -> int:
        return len(self._line)

    @property
    def n_running(self) -> int:
        return len(self._entries) - len(self._line)

    def queued(self) -> Iterator[Task]:
        """Queued tasks in the order they would run."""
        return (e.task for e in self._line)

    def stealable(self, now: float) -> Iterator[Task]:
        """Queued tasks a thief could be given (model and cost rules aside), for reports."""
        return (e.task for e in self._line if self._may_hand_over(e, now))

    def head(self) -> Task | None:
        """The queued task that would start next, if any."""
        return self._line[0].task if self._line else None

    def running(self) -> Iterator[Task]:
        return (e.task for e in self._entries.values() if e.state is EntryState.RUNNING)

    def state(self, task_id: str) -> EntryState | None:
        entry = self._entries.get(task_id)
        return entry.state if entry else None

    def is_stolen(self, task_id: str) -> bool:
        entry = self._entries.get(task_id)
        return entry is not None and entry.stolen

    def queued_cost_s(self) -> float:
        """Sum of the compute estimates of the waiting tasks (speed-1.0 seconds)."""
        return self._line_cost if self._line else 0.0

    def next_deadline(self) -> float | None:
        """Earliest deadline of any task here, for the driver's timer; None if none."""
        deadlines = [e.task.deadline for e in self._entries.values() if e.task.deadline > 0]
        return min(deadlines) if deadlines else None

    # ---- inputs --------------------------------------------------------------------------

    def push(self, task: Task, now: float, stolen: bool = False, front: bool = False) -> None:
        """Adds a task to the waiting line.

        ``stolen`` marks a task that came here by a steal, so it is never handed over again.
        ``front`` puts it ahead of its priority peers: for a task the origin re-queues, which
        has waited longest already. Raises ResourceExhausted when full and AlreadyExists for a
        task id already here.
        """
        if task.task_id in self._entries:
            raise AlreadyExists(f"task {task.task_id} is already queued on {self.node}")
        if len(self._line) >= self.cfg.max_queued:
            raise ResourceExhausted(
                f"task queue of {self.node} is full ({self.cfg.max_queued} tasks); "
                "retry later, submit to another node, or raise tasks.max_queued"
            )
        if front:
            self._front_seq -= 1
            seq = self._front_seq
        else:
            self._seq += 1
            seq = self._seq
        entry = _Entry(task, seq, EntryState.QUEUED, stolen, now)
        self._entries[task.task_id] = entry
        if not self._line:
            self._line_cost = 0.0  # drop the rounding residue of earlier additions
        bisect.insort(self._line, entry, key=lambda e: e.key)
        self._line_cost += task.est_cost_s

    def pop_for_execution(self, models: Collection[str] | None = None) -> Task | None:
        """The hottest queued task, now marked running; None when nothing is waiting.

        ``models`` restricts the choice to models loaded in the engine (None = any).
        """
        for i, entry in enumerate(self._line):
            if models is None or entry.task.model in models:
                del self._line[i]
                self._line_cost -= entry.task.est_cost_s
                entry.state = EntryState.RUNNING
                return entry.task
        return None

    def finish(self, task_id: str) -> Task:
        """Removes a running task once the engine is done with it (either way)."""
        entry = self._entries.get(task_id)
        if entry is None or entry.state is not EntryState.RUNNING:
            raise NotFound(f"task {task_id} is not running on {self.node}")
        del self._entries[task_id]
        return entry.task

    def remove(self, task_id: str) -> Task | None:
        """Drops a task wherever it is (cancelled, or superseded by a newer attempt)."""
        entry = self._entries.pop(task_id, None)
        if entry is None:
            return None
        if entry.state is EntryState.QUEUED:
            self._unline(entry)
        return entry.task

    def take_for_steal(
        self,
        max_n: int,
        models: Collection[str],
        thief_speed: float,
        now: float,
        others_speed: float = 0.0,
    ) -> list[Task]:
        """Removes and returns up to ``max_n`` tasks for a thief, from the cold end.

        Only queued tasks that never moved before, whose model the thief serves (``models``
        empty = any) and that are worth moving (``worth_moving``); at most the thief's share
        (``steal_share``, with ``others_speed`` of other peers) of the queue. Tasks this node
        did not originate are kept unless ``steal_foreign`` is on (see TasksConfig). Expired
        tasks are left for ``expire``.
        """
        limit = min(max_n, steal_share(len(self._line), thief_speed, self.speed, others_speed))
        wanted = set(models)
        taken: list[_Entry] = []
        behind = 0.0  # estimates of the entries after this one (colder), this one included
        for entry in reversed(self._line):
            if len(taken) >= limit:
                break
            task = entry.task
            behind += task.est_cost_s
            if not self._may_hand_over(entry, now):
                continue
            if wanted and task.model not in wanted:
                continue
            wait_s = max(0.0, self.queued_cost_s() - behind) / max(self.speed, 1e-9)
            if not worth_moving(task, thief_speed, self.cfg, wait_s):
                continue
            taken.append(entry)
        for entry in taken:
            del self._entries[entry.task.task_id]
            self._unline(entry)
        return [e.task for e in taken]

    def expire(self, now: float) -> list[Expired]:
        """Removes and returns every task, queued or running, whose deadline has passed."""
        gone = [e for e in self._entries.values() if e.task.expired(now)]
        for entry in gone:
            del self._entries[entry.task.task_id]
            if entry.state is EntryState.QUEUED:
                self._unline(entry)
        return [Expired(e.task, e.state is EntryState.RUNNING) for e in gone]

    # ---- internals -----------------------------------------------------------------------

    def _may_hand_over(self, entry: _Entry, now: float) -> bool:
        if entry.stolen or entry.task.expired(now):
            return False
        return entry.task.origin == self.node or self.cfg.steal_foreign

    def _unline(self, entry: _Entry) -> None:
        i = bisect.bisect_left(self._line, entry.key, key=lambda e: e.key)
        assert self._line[i] is entry, "waiting line out of order"
        del self._line[i]
        self._line_cost = self._line_cost - entry.task.est_cost_s if self._line else 0.0

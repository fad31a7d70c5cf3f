"""The life of a task as its client sees it: queued -> running(node) -> done | failed.

The origin keeps this record for each task it accepted and streams its events to ``Wait``
callers (``Infer`` is ``Submit`` followed by ``Wait``). The record is fed by the origin's lease
table, which knows where the task is; the events here are what a client may observe.

Rules (the table below): a task may go back from running to queued (its executor died and the
origin re-queued it, with a new attempt) and may be queued again on another node (stolen or
assigned). ``done`` and ``failed`` are final: nothing follows them, which is what lets a
Wait caller stop at the first terminal event and never see a second result.

Every event gets a sequence number, increasing across the whole table, so a Wait caller that
reconnects can resume with ``events(task_id, after_seq)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from p2pagent.errors import FailedPrecondition, NotFound


class TaskState(Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (TaskState.DONE, TaskState.FAILED)


#: Allowed moves. QUEUED -> QUEUED is a move between nodes (steal, assign, re-queue);
#: RUNNING -> QUEUED is a re-queue after the executor died; RUNNING -> RUNNING is a newer
#: attempt seen running before its queued event. QUEUED -> DONE happens when the result
#: arrives before we heard the task start.
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.QUEUED: frozenset(TaskState),
    TaskState.RUNNING: frozenset(TaskState),
    TaskState.DONE: frozenset(),
    TaskState.FAILED: frozenset(),
}


@dataclass(frozen=True)
class TaskEvent:
    """One observable change of a task, as streamed to Wait callers."""

    task_id: str
    seq: int
    state: TaskState
    #: Node holding (queued), running, or having run (done/failed) the task.
    node: str
    attempt: int
    at: float
    error_code: str = ""
    error_message: str = ""


class TaskLifecycle:
    """State and event history of the tasks one origin accepted."""

    def __init__(self) -> None:
        self._events: dict[str, list[TaskEvent]] = {}
        self._seq = 0

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._events

    def state(self, task_id: str) -> TaskState | None:
        events = self._events.get(task_id)
        return events[-1].state if events else None

    def last(self, task_id: str) -> TaskEvent:
        events = self._events.get(task_id)
        if not events:
            raise NotFound(f"no task {task_id} here: it was never submitted to this node")
        return events[-1]

    def events(self, task_id: str, after_seq: int = 0) -> list[TaskEvent]:
        """Events of a task newer than ``after_seq``, oldest first (for Wait streams)."""
        if task_id not in self._events:
            raise NotFound(f"no task {task_id} here: it was never submitted to this node")
        return [e for e in self._events[task_id] if e.seq > after_seq]

    def record(
        self,
        task_id: str,
        state: TaskState,
        node: str,
        attempt: int,
        now: float,
        error_code: str = "",
        error_message: str = "",
    ) -> TaskEvent | None:
        """Appends an event; None when it changes nothing (same state, node and attempt).

        Raises FailedPrecondition on a move the table forbids: that is a bug in the caller,
        since the lease table never reports anything about a finished task.
        """
        events = self._events.get(task_id, [])
        if events:
            prev = events[-1]
            if state not in TRANSITIONS[prev.state]:
                raise FailedPrecondition(
                    f"task {task_id} cannot go from {prev.state.value} to {state.value}"
                )
            if (prev.state, prev.node, prev.attempt) == (state, node, attempt):
                return None
        elif state is not TaskState.QUEUED:
            raise FailedPrecondition(f"task {task_id} must be queued before it is {state.value}")
        self._seq += 1
        event = TaskEvent(task_id, self._seq, state, node, attempt, now, error_code, error_message)
        self._events.setdefault(task_id, events).append(event)
        return event

    def forget(self, task_id: str) -> None:
        """Drops a finished task's history (after its retention period)."""
        self._events.pop(task_id, None)

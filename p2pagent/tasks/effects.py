"""What the task scheduler core (``tasks/core.py``) asks its driver to do.

Each input of :class:`~p2pagent.tasks.core.TaskNode` returns a list of these; the asyncio
adapter (``tasks/adapter.py``) and the simulator (``sim/tasks.py``) carry them out and feed
the outcomes back as inputs (named in each docstring). Frozen, plain data: a recorded run is
compared effect by effect (``tests/unit/tasks/test_replay.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pagent.membership.hints import LoadHint
from p2pagent.tasks.lifecycle import TaskEvent
from p2pagent.tasks.load import LoadReport
from p2pagent.tasks.results import TaskResult
from p2pagent.tasks.spec import Task


@dataclass(frozen=True)
class StartRun:
    """Run ``task`` on the engine; then ``on_run_finished(task, result, now)``."""

    task: Task


@dataclass(frozen=True)
class SendAssign:
    """``Peer.Assign`` of ``task`` to ``node``; then ``on_assign_result``."""

    node: str
    task: Task


@dataclass(frozen=True)
class SendSteal:
    """``Peer.Steal`` from ``victim``; then ``on_steal_response`` (no tasks if it failed)."""

    victim: str
    max_tasks: int
    models: tuple[str, ...]
    thief_speed: float


@dataclass(frozen=True)
class SendComplete:
    """``Peer.Complete`` of ``result`` to its ``origin``; ``on_complete_ack`` once answered
    (a failed call needs nothing: it is sent again every ``tasks.complete_retry_s``)."""

    origin: str
    result: TaskResult


@dataclass(frozen=True)
class SendReport:
    """``Peer.Load`` with our ``report`` to ``peer`` (an origin of tasks held here); the
    answer is the peer's report, fed to ``on_load_report``."""

    peer: str
    report: LoadReport


@dataclass(frozen=True)
class PublishHint:
    """Gossip our load with membership (``urgent``: at once, not at the next round)."""

    hint: LoadHint
    urgent: bool


@dataclass(frozen=True)
class JournalResult:
    """Journal the one result of a task this node originated; then ``on_journaled``."""

    result: TaskResult


@dataclass(frozen=True)
class DeliverResult:
    """Hand the result to whoever waits for it: ``Wait`` callers (it is journaled), or the
    ``Agent.Infer`` call waiting in place (``inline``: never journaled)."""

    result: TaskResult
    inline: bool


@dataclass(frozen=True)
class TaskChanged:
    """A task of this origin changed state: wake ``Wait`` callers."""

    event: TaskEvent


@dataclass(frozen=True)
class ForgetResults:
    """Results delivered before ``horizon`` leave memory and the journal."""

    task_ids: tuple[str, ...]
    horizon: float


Effect = (
    StartRun
    | SendAssign
    | SendSteal
    | SendComplete
    | SendReport
    | PublishHint
    | JournalResult
    | DeliverResult
    | TaskChanged
    | ForgetResults
)

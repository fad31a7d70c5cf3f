"""Task scheduling metrics: queue, backlog, completions, work stealing, lost leases."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric

from p2pagent.metrics.families import counter, gauge


@dataclass(frozen=True)
class TasksSnapshot:
    queued: int
    running: int
    backlog_s: float
    completed: int
    stolen_in: int
    stolen_out: int
    steal_requests: int
    leases_lost: int


def render(s: TasksSnapshot) -> Iterator[Metric]:
    yield gauge("p2pagent_tasks_queued", "Tasks waiting in this node's queue", s.queued)
    yield gauge("p2pagent_tasks_running", "Tasks running on this node", s.running)
    yield gauge(
        "p2pagent_tasks_backlog_seconds",
        "Estimated seconds of work queued on this node",
        s.backlog_s,
    )
    yield counter("p2pagent_tasks_completed", "Tasks this node ran to completion", s.completed)
    yield counter("p2pagent_tasks_stolen_in", "Tasks this node took from busier peers", s.stolen_in)
    yield counter("p2pagent_tasks_stolen_out", "Tasks peers took from this node", s.stolen_out)
    yield counter(
        "p2pagent_tasks_steal_requests", "Steal requests this node sent", s.steal_requests
    )
    yield counter(
        "p2pagent_tasks_leases_lost",
        "Tasks taken back from a holder that died or let its lease expire",
        s.leases_lost,
    )

"""How busy a node is, measured locally and spread by gossip.

Each node measures the service time of each model it runs (an EWMA of compute seconds,
normalised to a speed-1.0 node) and summarises its queue as an estimated *backlog*: the
seconds it would need to drain what it holds with all its execution slots busy. That summary,
a ``LoadReport``, is what placement and stealing decide on. Reports are small, flat and made
of plain types so the driver can msgpack them into membership tags or replicated state.

Pure: no clock; the ``now`` passed in is only compared with other ``now`` values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.spec import Task


def ewma(previous: float | None, sample: float, alpha: float) -> float:
    """Exponentially weighted moving average; the first sample is taken as is."""
    return sample if previous is None else alpha * sample + (1 - alpha) * previous


def backlog_s(work_s: float, capacity: int, speed: float) -> float:
    """Seconds to drain ``work_s`` of speed-1.0 compute on ``capacity`` slots at ``speed``."""
    return work_s / (max(capacity, 1) * max(speed, 1e-9))


class ServiceTimes:
    """Per-model EWMA of measured compute time, normalised to a speed-1.0 node."""

    def __init__(self, cfg: TasksConfig | None = None, speed: float = 1.0) -> None:
        self.cfg = cfg or TasksConfig()
        self.speed = speed
        self._by_model: dict[str, float] = {}

    def observe(self, model: str, compute_s: float) -> None:
        """Records one run of ``model`` that took ``compute_s`` seconds on this node."""
        if compute_s < 0:
            return
        normalised = compute_s * self.speed
        self._by_model[model] = ewma(self._by_model.get(model), normalised, self.cfg.ewma_alpha)

    def estimate(self, model: str, default: float) -> float:
        """Estimated speed-1.0 compute seconds of one run of ``model``."""
        return self._by_model.get(model, default)

    def cost_of(self, task: Task) -> float:
        """The measured estimate when we have one, otherwise the origin's."""
        return self._by_model.get(task.model, task.est_cost_s)


@dataclass(frozen=True)
class ModelBacklog:
    """Queued work for one model on one node."""

    model: str
    count: int
    #: Sum of compute estimates, speed-1.0 seconds.
    cost_s: float

    @property
    def mean_cost_s(self) -> float:
        return self.cost_s / self.count if self.count else 0.0


@dataclass(frozen=True)
class LoadReport:
    """One node's load, as gossiped to its peers. Plain fields only; encode with asdict."""

    node: str
    #: Increases with every report from ``node``; older reports are ignored.
    seq: int
    #: Seconds to drain everything queued and running here.
    backlog_s: float
    queue_len: int
    running: int
    #: Execution slots (concurrent tasks) and relative speed (1.0 = reference node).
    capacity: int
    speed: float
    #: Models this node can serve now (loaded or stored locally).
    models: frozenset[str] = frozenset()
    #: Queued work by model that this node would hand over, for thieves to judge.
    queued: tuple[ModelBacklog, ...] = ()
    #: Ids of tasks from other origins held here (queued or running): each origin renews its
    #: leases from this and detects hand-overs lost in transit.
    held: frozenset[str] = frozenset()
    #: The subset of ``held`` that is running, so origins can tell Wait callers.
    running_ids: frozenset[str] = field(default_factory=frozenset)


def make_report(
    node: str,
    seq: int,
    queued: Iterable[Task],
    running: Iterable[Task],
    capacity: int,
    speed: float,
    models: Iterable[str],
    stealable: Iterable[Task] | None = None,
) -> LoadReport:
    """Summarises a node's queue as a LoadReport.

    ``stealable``: the queued tasks this node would hand to a thief (``TaskQueue.stealable``);
    only they are advertised per model, so thieves do not come for work they cannot get.
    Defaults to all of ``queued``.
    """
    queued = list(queued)
    running = list(running)
    by_model: dict[str, tuple[int, float]] = {}
    for t in queued if stealable is None else stealable:
        n, c = by_model.get(t.model, (0, 0.0))
        by_model[t.model] = (n + 1, c + t.est_cost_s)
    # A running task is, on average, half done: count half its estimate.
    work = sum(t.est_cost_s for t in queued) + 0.5 * sum(t.est_cost_s for t in running)
    foreign_queued = {t.task_id for t in queued if t.origin != node}
    foreign_running = frozenset(t.task_id for t in running if t.origin != node)
    return LoadReport(
        node=node,
        seq=seq,
        backlog_s=backlog_s(work, capacity, speed),
        queue_len=len(queued),
        running=len(running),
        capacity=capacity,
        speed=speed,
        models=frozenset(models),
        queued=tuple(ModelBacklog(m, n, c) for m, (n, c) in sorted(by_model.items())),
        held=frozenset(foreign_queued | foreign_running),
        running_ids=foreign_running,
    )


class LoadBoard:
    """The freshest report heard from each peer."""

    def __init__(self, cfg: TasksConfig | None = None) -> None:
        self.cfg = cfg or TasksConfig()
        self._reports: dict[str, tuple[LoadReport, float]] = {}

    def update(self, report: LoadReport, now: float) -> bool:
        """Keeps ``report`` unless a newer one from that node is known; True if kept."""
        known = self._reports.get(report.node)
        if known is not None and known[0].seq >= report.seq:
            return False
        self._reports[report.node] = (report, now)
        return True

    def forget(self, node: str) -> None:
        """Drops a node declared dead or gone."""
        self._reports.pop(node, None)

    def latest(self) -> list[LoadReport]:
        """The last report of every node not forgotten, however old: an idle peer gossips
        its load once and then stays quiet, and what it serves has not changed since."""
        return [r for _, (r, _at) in sorted(self._reports.items())]

    def get(self, node: str) -> LoadReport | None:
        known = self._reports.get(node)
        return known[0] if known else None

    def any_backlog(self, now: float, at_least_s: float) -> bool:
        """Whether a fresh report shows at least ``at_least_s`` of stealable work."""
        limit = self.cfg.report_max_age_s
        return any(
            r.backlog_s >= at_least_s and now - at <= limit for r, at in self._reports.values()
        )

    def fresh(self, now: float) -> list[LoadReport]:
        """Reports heard within ``report_max_age_s``, sorted by node name (deterministic)."""
        limit = self.cfg.report_max_age_s
        return [r for _, (r, at) in sorted(self._reports.items()) if now - at <= limit]

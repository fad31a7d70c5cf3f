"""Where a newly submitted task goes first, chosen by ``tasks.placement``.

- ``local``: always here. Baseline: no sharing at all.
- ``round_robin``: the next node in turn among those serving the model (the source document's
  scheme). Blind to load and speed, so one slow node sets the makespan.
- ``least_loaded``: power of two choices on gossiped backlog (ours counts too). Good with fresh
  reports; with stale ones, many origins can pile onto the same "idle" node.
- ``work_stealing`` (default): always enqueue here and let idle peers steal. Placement needs
  no load information at all; balance comes from the nodes that run dry, which know best.

Pure: ``choose(task, own, peers, now, rng)`` returns a node name; ``rng`` is injected.

Adding a policy: a class here with ``@registered("name")`` (and its test). The config check,
the daemon's ``--placement``, the simulator and the benches read the names from
:data:`PLACEMENTS`, which this registry fills.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from p2pagent.errors import ConfigError
from p2pagent.tasks.load import LoadReport
from p2pagent.tasks.spec import Task


class Placement(Protocol):
    name: str
    #: Always answers ``own.node``: the caller may skip building its load report.
    always_local: bool

    def choose(
        self,
        task: Task,
        own: LoadReport,
        peers: Sequence[LoadReport],
        now: float,
        rng: random.Random,
    ) -> str:
        """The node ``task`` should be queued on (``own.node`` for here)."""
        ...


_REGISTRY: dict[str, Callable[[], Placement]] = {}
#: The policies' names, in the order they are registered (the default, work_stealing, first).
PLACEMENTS: list[str] = []
_P = TypeVar("_P")


def registered(name: str) -> Callable[[type[_P]], type[_P]]:
    """Class decorator: the policy is made by ``make_placement(name)``."""

    def register(cls: type[_P]) -> type[_P]:
        if name in _REGISTRY:
            raise ValueError(f"placement {name!r} is registered twice")
        _REGISTRY[name] = cls  # type: ignore[assignment]
        PLACEMENTS.append(name)
        return cls

    return register


def serving(task: Task, own: LoadReport, peers: Sequence[LoadReport]) -> list[LoadReport]:
    """Our report and the peers' that can serve ``task``'s model, sorted by node name.

    We always count as serving: the origin can pull the model if it lacks it.
    """
    others = [p for p in peers if p.node != own.node and task.model in p.models]
    return sorted([own, *others], key=lambda r: r.node)


@registered("work_stealing")
class WorkStealingPlacement:
    """Enqueue here; peers that run dry steal (see steal.py)."""

    name = "work_stealing"
    always_local = True

    def choose(
        self,
        task: Task,
        own: LoadReport,
        peers: Sequence[LoadReport],
        now: float,
        rng: random.Random,
    ) -> str:
        return own.node


@registered("round_robin")
class RoundRobinPlacement:
    name = "round_robin"
    always_local = False

    def __init__(self) -> None:
        self._turn = 0

    def choose(
        self,
        task: Task,
        own: LoadReport,
        peers: Sequence[LoadReport],
        now: float,
        rng: random.Random,
    ) -> str:
        nodes = serving(task, own, peers)
        chosen = nodes[self._turn % len(nodes)]
        self._turn += 1
        return chosen.node


@registered("least_loaded")
class LeastLoadedPlacement:
    """Power of two choices: of two random serving nodes, the one with less backlog.

    Ties go to us (no transfer). Backlogs we just sent work to are bumped locally until the
    next report arrives, so a burst of submissions does not all land on one node.
    """

    name = "least_loaded"
    always_local = False

    def __init__(self) -> None:
        self._pending: dict[str, tuple[int, float]] = {}

    def choose(
        self,
        task: Task,
        own: LoadReport,
        peers: Sequence[LoadReport],
        now: float,
        rng: random.Random,
    ) -> str:
        nodes = serving(task, own, peers)
        if len(nodes) == 1:
            return own.node
        a, b = rng.sample(nodes, 2)
        la, lb = self._backlog(a), self._backlog(b)
        chosen = a if la < lb else b
        if la == lb and own.node in (a.node, b.node):
            chosen = own  # a tie: keep it here, no transfer
        if chosen.node != own.node:
            seq, extra = self._pending.get(chosen.node, (chosen.seq, 0.0))
            if seq != chosen.seq:  # a newer report already counts what we sent
                extra = 0.0
            added = task.est_cost_s / (max(chosen.capacity, 1) * max(chosen.speed, 1e-9))
            self._pending[chosen.node] = (chosen.seq, extra + added)
        return chosen.node

    def _backlog(self, report: LoadReport) -> float:
        seq, extra = self._pending.get(report.node, (report.seq, 0.0))
        return report.backlog_s + (extra if seq == report.seq else 0.0)


@registered("local")
class LocalPlacement:
    name = "local"
    always_local = True

    def choose(
        self,
        task: Task,
        own: LoadReport,
        peers: Sequence[LoadReport],
        now: float,
        rng: random.Random,
    ) -> str:
        return own.node


def make_placement(name: str) -> Placement:
    """A new instance of the placement policy called ``name`` (one of PLACEMENTS)."""
    make = _REGISTRY.get(name)
    if make is None:
        raise ConfigError(f"unknown placement {name!r}: choose one of {', '.join(PLACEMENTS)}")
    return make()

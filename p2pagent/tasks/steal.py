"""When and whom to steal from: the thief's side of work stealing.

A node that is about to run dry (the work queued here would last less than
``steal_low_water_s``) picks a victim and asks it for tasks. There is no scheduler: each idle
node decides alone from the load reports gossiped by its peers.

Victim choice is *power of two choices*: draw two eligible peers at random and rob the one
with more backlog. Always robbing the single busiest peer would send every idle node to the
same victim at once (a herd, and most of them come back empty); two random choices spread
thieves out while still landing on a busy peer with high probability.

A peer is eligible when it is fresh in our view, its backlog is above
``min_victim_backlog_s`` (a nearly idle peer finishes soon anyway, and robbing it only moves
the tail), and it has queued work for a model we can serve — or for a model we could pull
first, when that model's tasks run long enough to pay for the pull (``pull_payoff_ratio``).

After an empty or failed steal the thief backs off exponentially (capped, with jitter), so an
idle cluster does not flood itself with steal requests. One steal is in flight at a time.

Load comes from gossiped hints, and a hint is a peer's claim. A peer that claims a backlog it
does not hand over (it lies, or its hint is out of date) is *shunned* by each thief it turned
away: left out of the choice for ``victim_shun_s(k)`` after ``k`` empty answers in a row, a
delay that doubles up to ``report_max_age_s``, as long as another victim is eligible. With
two random choices a liar claiming the largest backlog is picked at most about 2/n of the
time to begin with, and after its empty answers hardly at all; one claiming nothing simply
keeps its own work.

Pure: ``decide(now, ...)`` returns a ``StealAttempt`` or None; the driver sends
``Peer.Steal`` and feeds the outcome back with ``on_steal_result``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.load import LoadReport, backlog_s


@dataclass(frozen=True)
class StealAttempt:
    """Ask ``victim`` for up to ``max_tasks`` tasks of ``models`` (maps to StealRequest)."""

    victim: str
    max_tasks: int
    models: tuple[str, ...]
    thief_speed: float


def backoff_delay(failures: int, cfg: TasksConfig, rng: random.Random) -> float:
    """base * 2**(failures-1), capped at max, then "equal jitter" (50-100 % of it).

    Jitter keeps thieves that failed together from retrying together.
    """
    if failures <= 0:
        return 0.0
    raw = min(cfg.steal_backoff_max_s, cfg.steal_backoff_base_s * 2.0 ** min(failures - 1, 30))
    return raw * (0.5 + 0.5 * rng.random())


def victim_shun_s(empties: int, cfg: TasksConfig) -> float:
    """How long a victim that answered ``empties`` steals in a row with nothing is skipped."""
    if empties <= 0:
        return 0.0
    return min(cfg.report_max_age_s, cfg.steal_backoff_base_s * 2.0 ** min(empties - 1, 30))


def batch_size(mean_cost_s: float, thief_speed: float, cfg: TasksConfig) -> int:
    """Tasks that cover ``steal_batch_s`` of our time: few big steals beat many small ones,
    but a stolen task cannot move again, so grabbing too much would strand work here."""
    if mean_cost_s <= 0:
        return cfg.steal_max_tasks
    n = math.ceil(cfg.steal_batch_s * thief_speed / mean_cost_s)
    return max(1, min(cfg.steal_max_tasks, n))


def fair_share(count: int, thief_speed: float, total_speed: float) -> int:
    """Our speed's share of the victim's stealable tasks, at least one.

    Near the end of a burst this keeps one thief from taking the last tasks that every idle
    node could run in parallel (stolen tasks cannot move again).
    """
    return max(1, math.ceil(count * thief_speed / max(total_speed, 1e-9)))


def pull_pays_off(mean_cost_s: float, thief_speed: float, pull_s: float, ratio: float) -> bool:
    """A model we lack is worth fetching when its tasks run ``ratio`` times the pull."""
    return mean_cost_s / max(thief_speed, 1e-9) >= ratio * pull_s


@dataclass(frozen=True)
class _Candidate:
    report: LoadReport
    models: tuple[str, ...]
    backlog_s: float
    mean_cost_s: float
    count: int


class StealPolicy:
    """Thief-side state: the steal in flight and the back-off after fruitless ones."""

    def __init__(
        self, node: str, rng: random.Random, cfg: TasksConfig | None = None, speed: float = 1.0
    ) -> None:
        self.node = node
        self.rng = rng
        self.cfg = cfg or TasksConfig()
        self.speed = speed
        self.failures = 0
        self.not_before = 0.0
        self._in_flight: tuple[str, float] | None = None
        #: Victim -> (empty answers in a row, skipped until).
        self._shunned: dict[str, tuple[int, float]] = {}
        #: Counters for metrics and the simulator.
        self.attempts = 0
        self.empty = 0

    @property
    def in_flight(self) -> str | None:
        """Victim of the steal in flight, if any."""
        return self._in_flight[0] if self._in_flight else None

    def next_wakeup(self) -> float | None:
        """When ``decide`` could next return something new: a timeout or a back-off end."""
        if self._in_flight is not None:
            return self._in_flight[1] + self.cfg.steal_timeout_s
        return self.not_before if self.failures else None

    def decide(
        self,
        now: float,
        queued_work_s: float,
        serve_models: Collection[str],
        peers: Sequence[LoadReport],
        pull_cost_s: Mapping[str, float] | None = None,
    ) -> StealAttempt | None:
        """A steal to make now, or None.

        ``queued_work_s``: seconds the work queued here (not running) would take us.
        ``serve_models``: models we can run now. ``pull_cost_s``: seconds to fetch each model
        we could pull (absent = cannot). ``peers``: fresh load reports (ours is skipped).
        """
        if self._in_flight is not None:
            victim, since = self._in_flight
            if now - since < self.cfg.steal_timeout_s:
                return None
            self.on_steal_result(victim, 0, now)  # no answer: count it as a failure
        if now < self.not_before or queued_work_s >= self.cfg.steal_low_water_s:
            return None
        eligible = self._candidates(set(serve_models), peers, pull_cost_s or {})
        trusted = [c for c in eligible if self._shunned.get(c.report.node, (0, 0.0))[1] <= now]
        # Shunning steers the choice between victims; with none left, the back-off alone
        # paces us (a lone victim that ran dry is asked again no sooner than before).
        candidates = trusted or eligible
        if not candidates:
            return None
        if len(candidates) == 1:
            chosen = candidates[0]
        else:
            a, b = self.rng.sample(candidates, 2)
            chosen = a if a.backlog_s >= b.backlog_s else b
        self._in_flight = (chosen.report.node, now)
        self.attempts += 1
        total_speed = self.speed + sum(p.speed for p in peers if p.node != self.node)
        fair = fair_share(chosen.count, self.speed, total_speed)
        return StealAttempt(
            victim=chosen.report.node,
            max_tasks=min(fair, batch_size(chosen.mean_cost_s, self.speed, self.cfg)),
            models=chosen.models,
            thief_speed=self.speed,
        )

    def on_steal_result(self, victim: str, n_tasks: int, now: float) -> None:
        """Feeds back a steal's outcome: ``n_tasks`` received (0 for empty or failed)."""
        if self._in_flight is not None and self._in_flight[0] == victim:
            self._in_flight = None
        if n_tasks > 0:
            self.failures = 0
            self.not_before = now
            self._shunned.pop(victim, None)
            return
        empties = self._shunned.get(victim, (0, 0.0))[0] + 1
        self._shunned[victim] = (empties, now + victim_shun_s(empties, self.cfg))
        self.empty += 1
        self.failures += 1
        self.not_before = now + backoff_delay(self.failures, self.cfg, self.rng)

    def on_member_dead(self, node: str) -> None:
        """Membership declared ``node`` dead: stop waiting for its answer (not a failure)."""
        if self._in_flight is not None and self._in_flight[0] == node:
            self._in_flight = None
        self._shunned.pop(node, None)

    def _candidates(
        self,
        serve: set[str],
        peers: Sequence[LoadReport],
        pull_cost_s: Mapping[str, float],
    ) -> list[_Candidate]:
        out: list[_Candidate] = []
        for report in peers:
            if report.node == self.node or report.backlog_s < self.cfg.min_victim_backlog_s:
                continue
            models: list[str] = []
            count = 0
            cost = 0.0
            for mb in report.queued:
                ok = mb.model in serve or (
                    mb.model in pull_cost_s
                    and pull_pays_off(
                        mb.mean_cost_s,
                        self.speed,
                        pull_cost_s[mb.model],
                        self.cfg.pull_payoff_ratio,
                    )
                )
                if ok and mb.count > 0:
                    models.append(mb.model)
                    count += mb.count
                    cost += mb.cost_s
            if not count:
                continue
            eligible = backlog_s(cost, report.capacity, report.speed)
            if eligible < self.cfg.min_victim_backlog_s:
                continue
            out.append(_Candidate(report, tuple(models), eligible, cost / count, count))
        return out

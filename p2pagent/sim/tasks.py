"""Discrete-event simulation of task placement and work stealing on N nodes.

Each node is the scheduler core the daemon runs (:class:`~p2pagent.tasks.core.TaskNode`),
driven with the virtual clock and simulated network the way ``tasks/adapter.py`` drives it
with real ones: the simulator only carries out its effects. Each node runs one task at a time
at its own speed; tasks are all submitted to one node (the origin); load travels as hints; a
node may crash mid-run and is declared dead by the others after ``detect_s``. Executors retry
``Complete`` until acknowledged, so the origin sees duplicates.

What comes out (``SimResult``): per-node completion time, makespan against the ideal
(total work / sum of speeds), steal requests per task, duplicates delivered (must be 0), lost
tasks (must be 0), and how soon a crashed node's tasks run elsewhere once it is declared dead.

Run: ``python -m p2pagent.sim tasks --nodes 4 --tasks 400 --placement work_stealing``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from p2pagent.membership.hints import LoadHint
from p2pagent.sim.clock import VirtualClock
from p2pagent.sim.network import LinkModel, SimNetwork
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.core import TaskNode
from p2pagent.tasks.effects import (
    DeliverResult,
    Effect,
    JournalResult,
    PublishHint,
    SendAssign,
    SendComplete,
    SendReport,
    SendSteal,
    StartRun,
)
from p2pagent.tasks.hinting import from_hint
from p2pagent.tasks.load import LoadReport
from p2pagent.tasks.placement import PLACEMENTS, make_placement
from p2pagent.tasks.results import TaskResult
from p2pagent.tasks.spec import Task

MODEL = "m"
#: Bytes of a control message (steal request, ack, report) on the simulated wire.
SMALL = 200
#: Most tasks one engine batch takes (the daemon's ``inference.max_batch_size``).
MAX_BATCH = 32


@dataclass
class Scenario:
    """One simulated run."""

    nodes: int = 4
    #: Relative speed of each node; missing entries are 1.0.
    speeds: list[float] = field(default_factory=list)
    tasks: int = 400
    #: Mean compute seconds of a task on a speed-1.0 node.
    cost_s: float = 0.02
    #: fixed, pareto (alpha 1.5) or lognormal (sigma 1.0); the scheduler only sees the mean.
    sizes: str = "fixed"
    input_bytes: int = 10_000
    placement: str = "work_stealing"
    #: (node index, time) of a crash, or None.
    crash: tuple[int, float] | None = None
    #: Seconds from a crash until the other nodes declare the node dead.
    detect_s: float = 1.0
    #: Seconds until a non-urgent load hint reaches the peers (membership's gossip round).
    gossip_s: float = 0.2
    #: Probability that any message is lost (all nodes).
    loss: float = 0.0
    link: LinkModel | None = None
    seed: int = 1
    cfg: TasksConfig = field(default_factory=TasksConfig)
    #: Give up (and count what is missing as lost) after this much virtual time.
    time_limit_s: float = 600.0
    #: Each task's compute seconds at speed 1, in submission order (overrides ``tasks``,
    #: ``cost_s`` and ``sizes``): the scenarios shared with the cluster bench.
    costs_s: list[float] = field(default_factory=list)
    #: Submissions arrive evenly over this many seconds (0: all at once), as a client's do.
    submit_over_s: float = 0.0
    #: Tasks a node runs at once (``TaskNode``'s capacity: the daemon's max batch size). With
    #: 1 a node runs one task at a time; above, its engine batches what was started.
    capacity: int = 1
    #: Fixed seconds of every engine batch (the worker's round trip, decoding), on top of
    #: the tasks' costs.
    batch_overhead_s: float = 0.0

    def __post_init__(self) -> None:
        if self.costs_s:
            self.tasks = len(self.costs_s)


@dataclass
class SimResult:
    placement: str
    makespan_s: float
    ideal_s: float
    node_finish_s: dict[str, float]
    node_tasks: dict[str, int]
    steal_requests: int
    tasks_moved: int
    max_moves_per_attempt: int
    duplicates_delivered: int
    duplicate_runs: int
    lost: int
    recovery_s: float | None
    #: max(ideal, the largest task on the fastest node): no schedule can beat it.
    lower_bound_s: float = 0.0

    @property
    def ratio(self) -> float:
        return self.makespan_s / self.ideal_s if self.ideal_s else math.inf

    @property
    def steals_per_task(self) -> float:
        total = sum(self.node_tasks.values()) or 1
        return self.steal_requests / total


# ---- messages on the simulated wire -----------------------------------------------------
# A request is the core's own effect (``SendSteal``, ``SendAssign``, ``SendComplete``,
# ``SendReport``), delivered to the node it names; only the answers have their own types.


@dataclass(frozen=True)
class StealResp:
    """``Peer.Steal``'s answer: what ``victim`` handed over."""

    victim: str
    tasks: tuple[Task, ...]


@dataclass(frozen=True)
class AssignResp:
    """``Peer.Assign``'s answer."""

    task_id: str
    attempt: int
    accepted: bool


@dataclass(frozen=True)
class CompleteAck:
    """``Peer.Complete``'s answer: stop sending that result."""

    task_id: str
    attempt: int


@dataclass(frozen=True)
class LoadResp:
    """``Peer.Load``'s answer: the origin's own report."""

    report: LoadReport


@dataclass(frozen=True)
class HintMsg:
    """A load hint as membership gossip delivers it."""

    hint: LoadHint


class _Engine:
    """A node's inference engine: the tasks started wait, and whenever it is free it runs all
    of them (up to ``MAX_BATCH``) as one batch that takes ``batch_overhead_s`` plus the sum of
    their costs at the node's speed (rows cost the same batched or not, as the cluster bench's
    ``busy`` model). ``measured`` once batches of two sizes have run (the daemon's
    ``batching_measured``); a node that ``batches`` has run one batch of one (a warm-up).
    ``full_batch_s``: ``MAX_BATCH`` tasks of the mean estimate run so far (rows cost the same
    batched or not, so a row adds its own cost), as the daemon's engine measures it."""

    def __init__(self, node: _Node, batches: bool) -> None:
        self.node = node
        self.waiting: list[Task] = []
        self.busy = False
        self._sizes: set[int] = {1} if batches else {1, 2}
        self._run_s = 0.0
        self._runs = 0

    @property
    def measured(self) -> bool:
        return len(self._sizes) >= 2

    def full_batch_s(self, model: str) -> float | None:
        return MAX_BATCH * self._run_s / self._runs if self._runs else None

    def run_next(self) -> None:
        if self.busy or not self.waiting or not self.node.alive:
            return
        batch, self.waiting = self.waiting[:MAX_BATCH], self.waiting[MAX_BATCH:]
        self._sizes.add(len(batch))
        self._run_s += sum(t.est_cost_s for t in batch)
        self._runs += len(batch)
        sim = self.node.sim
        work = sum(sim.true_cost[t.task_id] for t in batch) / self.node.speed
        took = sim.scenario.batch_overhead_s + work
        self.busy = True
        sim.clock.call_at(sim.clock.now + took, functools.partial(self._done, batch, took))

    def _done(self, batch: list[Task], took: float) -> None:
        for task in batch:  # still busy: what these start joins the next batch
            self.node._finish(task, took)
        self.busy = False
        self.run_next()


# ---- one node: the daemon's scheduler core, its effects carried out in virtual time ---------


class _Node:
    """What ``tasks/adapter.py`` is to the daemon, in virtual time: runs take
    ``true cost / speed``, peer calls are messages on the simulated network, the journal
    takes a result at once, and hints reach every peer (urgent ones at once, the others after
    a gossip round)."""

    def __init__(self, sim: TaskSim, name: str, speed: float) -> None:
        self.sim = sim
        self.name = name
        self.speed = speed
        sc = sim.scenario
        self.core = TaskNode(
            name, sc.cfg, placement=make_placement(sc.placement),
            rng=random.Random(sim.rng.random()), capacity=sc.capacity, models=lambda: [MODEL],
            batching_measured=lambda model: self.engine.measured,
            full_batch_s=lambda model: self.engine.full_batch_s(model), speed=speed,
        )  # fmt: skip
        self.engine = _Engine(self, sc.capacity > 1)
        self.alive = True
        self._timer_at = math.inf
        self._hint_seq = 0
        self.finished_at = 0.0
        self.executed = 0

    @property
    def now(self) -> float:
        return self.sim.clock.now

    def send(self, dst: str, msg: object, size: int = SMALL) -> None:
        self.sim.net.send(self.name, dst, msg, size)

    def carry_out(self, effects: list[Effect]) -> None:
        for e in effects:
            if isinstance(e, StartRun):
                self._start(e.task)
            elif isinstance(e, SendAssign):
                self.send(e.node, e, SMALL + e.task.input_bytes)
            elif isinstance(e, SendSteal):
                self.sim.steal_requests += 1
                self.send(e.victim, e)
            elif isinstance(e, SendComplete):
                self.send(e.origin, e)
            elif isinstance(e, SendReport):
                self.send(e.peer, e)
            elif isinstance(e, PublishHint):
                hint = self.stamp(e.hint)
                delay = 0.0 if e.urgent else self.sim.scenario.gossip_s
                self.sim.clock.call_at(self.now + delay, functools.partial(self._gossip, hint))
            elif isinstance(e, JournalResult):
                self.carry_out(self.core.on_journaled(e.result.task_id, self.now))
            elif isinstance(e, DeliverResult):
                self.sim.delivered(e.result.task_id, self.now)
        self._arm()

    def stamp(self, hint: LoadHint) -> LoadHint:
        """``hint`` numbered as membership numbers it: each newer than the last."""
        self._hint_seq += 1
        return dataclasses.replace(hint, seq=self._hint_seq)

    def _gossip(self, hint: LoadHint) -> None:
        if self.alive:
            for peer in self.sim.names:
                if peer != self.name:
                    self.send(peer, HintMsg(hint))

    def _arm(self) -> None:
        """One pending timer at the core's next deadline (an earlier one replaces it)."""
        due = self.core.next_deadline()
        if due is None or not self.alive:
            return
        due = max(due, self.now)
        if due < self._timer_at:
            self._timer_at = due
            self.sim.clock.call_at(due, self._fire)

    def _fire(self) -> None:
        if not self.alive:
            return
        self._timer_at = math.inf
        due = self.core.next_deadline()
        if due is not None and due <= self.now:
            self.carry_out(self.core.tick(self.now))
        else:
            self._arm()

    def _start(self, task: Task) -> None:
        self.sim.on_start(task)
        self.engine.waiting.append(task)
        self.engine.run_next()

    def _finish(self, task: Task, compute_s: float) -> None:
        if not self.alive:
            return
        self.finished_at = self.now
        self.executed += 1
        self.sim.runs[task.task_id] += 1
        result = TaskResult(task.task_id, task.attempt, self.name, True, compute_s=compute_s)
        self.carry_out(self.core.on_run_finished(task, result, self.now))

    def deliver(self, src: str, msg: object) -> None:
        if not self.alive:
            return
        now, core = self.now, self.core
        if isinstance(msg, HintMsg):
            self.carry_out(core.on_hint(from_hint(msg.hint), now))
        elif isinstance(msg, SendReport):
            self.carry_out(core.on_load_report(msg.report, now))
            self.send(src, LoadResp(core.report(now)))
        elif isinstance(msg, LoadResp):
            self.carry_out(core.on_load_report(msg.report, now))
        elif isinstance(msg, SendSteal):
            granted, effects = core.on_steal_request(
                src, msg.max_tasks, msg.models, msg.thief_speed, now
            )
            self.sim.tasks_moved += len(granted)
            for t in granted:
                self.sim.moves[(t.task_id, t.attempt)] += 1
            size = SMALL + sum(t.input_bytes for t in granted)
            self.send(src, StealResp(self.name, tuple(granted)), size)
            self.carry_out(effects)
        elif isinstance(msg, StealResp):
            self.carry_out(core.on_steal_response(msg.victim, msg.tasks, now))
        elif isinstance(msg, SendAssign):
            reason, effects = core.on_assign(msg.task, now)
            self.send(src, AssignResp(msg.task.task_id, msg.task.attempt, not reason))
            self.carry_out(effects)
        elif isinstance(msg, SendComplete):
            _accepted, effects = core.on_complete(msg.result, now)
            self.send(src, CompleteAck(msg.result.task_id, msg.result.attempt))
            self.carry_out(effects)
        elif isinstance(msg, CompleteAck):
            core.on_complete_ack(msg.task_id, msg.attempt)
        elif isinstance(msg, AssignResp):
            self.carry_out(core.on_assign_result(msg.task_id, msg.attempt, src, msg.accepted, now))


# ---- the simulation --------------------------------------------------------------------


class TaskSim:
    def __init__(self, scenario: Scenario) -> None:
        if scenario.placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {scenario.placement!r}")
        self.scenario = scenario
        self.rng = random.Random(scenario.seed)
        self.clock = VirtualClock()
        link = scenario.link if scenario.link is not None else LinkModel()
        self.net = SimNetwork(self.clock, random.Random(self.rng.random()), link)
        speeds = scenario.speeds + [1.0] * (scenario.nodes - len(scenario.speeds))
        self.names = [f"n{i}" for i in range(scenario.nodes)]
        self.nodes = {n: _Node(self, n, s) for n, s in zip(self.names, speeds, strict=False)}
        for name, node in self.nodes.items():
            self.net.register(name, node.deliver)
            if scenario.loss:
                self.net.set_loss(name, scenario.loss)
        self.stealing = scenario.placement == "work_stealing"
        self.true_cost: dict[str, float] = {}
        self.runs: Counter[str] = Counter()
        self.moves: Counter[tuple[str, int]] = Counter()
        self.deliveries: Counter[str] = Counter()
        self.steal_requests = 0
        self.tasks_moved = 0
        self.last_delivery = 0.0
        self.dead_at: float | None = None
        self._awaiting_restart: set[str] = set()
        self.recovery: list[float] = []

    # -- hooks from nodes --

    def on_start(self, task: Task) -> None:
        if task.task_id in self._awaiting_restart and self.dead_at is not None:
            self._awaiting_restart.discard(task.task_id)
            self.recovery.append(self.clock.now - self.dead_at)

    def delivered(self, task_id: str, now: float) -> None:
        self.deliveries[task_id] += 1
        self.last_delivery = max(self.last_delivery, now)

    # -- driving --

    def _sizes(self) -> Callable[[], float]:
        # Sizes come from their own stream so every policy sees the same tasks for a seed.
        s, mean = self.scenario.sizes, self.scenario.cost_s
        rng = random.Random(f"sizes/{self.scenario.seed}")
        if s == "fixed":
            return lambda: mean
        if s == "pareto":
            alpha = 1.5  # mean of paretovariate(a) is a/(a-1)
            return lambda: mean * rng.paretovariate(alpha) * (alpha - 1) / alpha
        if s == "lognormal":
            sigma = 1.0  # mean of lognormvariate(mu, s) is exp(mu + s^2/2)
            return lambda: mean * rng.lognormvariate(-(sigma**2) / 2, sigma)
        raise ValueError(f"unknown size distribution {s!r}: fixed, pareto or lognormal")

    def _crash(self, name: str) -> None:
        node = self.nodes[name]
        node.alive = False
        self.net.crash(name)
        self.clock.call_at(self.clock.now + self.scenario.detect_s, lambda: self._declare(name))

    def _declare(self, name: str) -> None:
        self.dead_at = now = self.clock.now
        for node in self.nodes.values():
            if node.alive:
                # What the dead node held runs again elsewhere: measured from here.
                self._awaiting_restart.update(node.core.leases.held_by(name))
                node.carry_out(node.core.on_member(name, False, now))

    def _submit(self, origin: _Node, task: Task) -> None:
        if origin.alive:
            origin.carry_out(origin.core.submit(task, self.clock.now))

    def run(self) -> SimResult:
        sc = self.scenario
        draw = self._sizes()
        # The cluster has converged before the burst: everyone knows everyone's load.
        for node in self.nodes.values():
            for effect in node.core.tick(0.0):
                if isinstance(effect, PublishHint):
                    report = from_hint(node.stamp(effect.hint))
                    for peer in self.nodes.values():
                        if peer is not node:
                            peer.core.on_hint(report, 0.0)
        origin = self.nodes[self.names[0]]
        for i in range(sc.tasks):
            cost = sc.costs_s[i] if sc.costs_s else draw()
            # Given costs are known to the origin (the daemon estimates rows x measured
            # seconds per row); drawn ones only by their mean.
            estimate = cost if sc.costs_s else sc.cost_s
            task = Task(
                f"{origin.name}/t{i}", origin.name, MODEL, estimate, input_bytes=sc.input_bytes
            )
            self.true_cost[task.task_id] = cost
            at = sc.submit_over_s * i / sc.tasks
            self.clock.call_at(at, functools.partial(self._submit, origin, task))
        for node in self.nodes.values():
            node.carry_out([])  # arm every node's timer
        if sc.crash is not None:
            idx, at = sc.crash
            self.clock.call_at(at, lambda: self._crash(self.names[idx]))
        while len(self.deliveries) < sc.tasks and self.clock.now < sc.time_limit_s:
            self.clock.run_until(self.clock.now + 0.01)
        return self._result()

    def _result(self) -> SimResult:
        sc = self.scenario
        speeds = sum(n.speed for n in self.nodes.values())
        return SimResult(
            placement=sc.placement,
            makespan_s=self.last_delivery,
            ideal_s=sum(self.true_cost.values()) / speeds,
            node_finish_s={n.name: n.finished_at for n in self.nodes.values()},
            node_tasks={n.name: n.executed for n in self.nodes.values()},
            steal_requests=self.steal_requests,
            tasks_moved=self.tasks_moved,
            max_moves_per_attempt=max(self.moves.values(), default=0),
            duplicates_delivered=sum(c - 1 for c in self.deliveries.values() if c > 1),
            duplicate_runs=sum(c - 1 for c in self.runs.values() if c > 1),
            lost=sc.tasks - len(self.deliveries),
            recovery_s=max(self.recovery) if self.recovery else None,
            lower_bound_s=max(
                sum(self.true_cost.values()) / speeds,
                max(self.true_cost.values(), default=0.0)
                / max(n.speed for n in self.nodes.values()),
            ),
        )


def link_with_latency(latency_s: float) -> LinkModel:
    """A link with ``latency_s`` one-way delay (the source document's communication cost)."""
    return LinkModel(latency_mean=latency_s, latency_jitter=0.0)


def simulate(scenario: Scenario) -> SimResult:
    return TaskSim(scenario).run()


def main(argv: list[str]) -> int:
    """``python -m p2pagent.sim tasks [options]``: one run, printed as a summary or JSON."""
    p = argparse.ArgumentParser(prog="python -m p2pagent.sim tasks", description=__doc__)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--tasks", type=int, default=400)
    p.add_argument("--cost", type=float, default=0.02, help="mean task seconds at speed 1")
    p.add_argument("--sizes", choices=("fixed", "pareto", "lognormal"), default="fixed")
    p.add_argument("--slow", type=int, default=0, help="how many nodes run 2x slower")
    p.add_argument("--placement", choices=PLACEMENTS, default="work_stealing")
    p.add_argument("--crash", default="", help="NODE_INDEX@SECONDS, e.g. 2@0.5")
    p.add_argument("--loss", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    crash = None
    if args.crash:
        idx, _, at = args.crash.partition("@")
        crash = (int(idx), float(at))
    speeds = [1.0] * (args.nodes - args.slow) + [0.5] * args.slow
    sc = Scenario(
        nodes=args.nodes,
        speeds=speeds,
        tasks=args.tasks,
        cost_s=args.cost,
        sizes=args.sizes,
        placement=args.placement,
        crash=crash,
        loss=args.loss,
        seed=args.seed,
    )
    r = simulate(sc)
    if args.json:
        out = dataclasses.asdict(r) | {"ratio": r.ratio, "steals_per_task": r.steals_per_task}
        print(json.dumps(out, indent=2))
    else:
        print(
            f"{r.placement}: makespan {r.makespan_s:.3f}s, ideal {r.ideal_s:.3f}s "
            f"(x{r.ratio:.2f}); steal requests/task {r.steals_per_task:.2f}, "
            f"moved {r.tasks_moved}; duplicates {r.duplicates_delivered}, lost {r.lost}"
        )
        for name in sorted(r.node_tasks):
            print(f"  {name}: {r.node_tasks[name]} tasks, done at {r.node_finish_s[name]:.3f}s")
    return 0 if r.lost == 0 and r.duplicates_delivered == 0 else 1

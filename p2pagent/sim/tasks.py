"""Discrete-event simulation of task placement and work stealing on N nodes.

Drives the pure task cores (queue, steal policy, lease table, placement) with the virtual
clock and simulated network, the way the asyncio driver drives them with real ones. Each node
runs one task at a time at its own speed; tasks are all submitted to one node (the origin);
nodes gossip load reports; a node may crash mid-run and is declared dead by the others after
``detect_s``. Executors retry ``Complete`` until acknowledged, so the origin sees duplicates.

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

from p2pagent.sim.clock import VirtualClock
from p2pagent.sim.network import LinkModel, SimNetwork
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.handover import hand_over
from p2pagent.tasks.leases import Action, Cancel, Deliver, LeaseTable, Requeue
from p2pagent.tasks.load import LoadBoard, LoadReport, make_report
from p2pagent.tasks.placement import PLACEMENTS, make_placement
from p2pagent.tasks.queue import EntryState, TaskQueue
from p2pagent.tasks.spec import Task
from p2pagent.tasks.steal import StealPolicy

MODEL = "m"
#: Bytes of a control message (steal request, ack, report) on the simulated wire.
SMALL = 200


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
    report_interval_s: float = 0.05
    complete_retry_s: float = 0.5
    #: Probability that any message is lost (all nodes).
    loss: float = 0.0
    link: LinkModel | None = None
    seed: int = 1
    cfg: TasksConfig = field(default_factory=TasksConfig)
    #: Give up (and count what is missing as lost) after this much virtual time.
    time_limit_s: float = 600.0


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


@dataclass(frozen=True)
class StealReq:
    thief: str
    max_tasks: int
    models: tuple[str, ...]
    thief_speed: float


@dataclass(frozen=True)
class StealResp:
    victim: str
    tasks: tuple[Task, ...]


@dataclass(frozen=True)
class AssignReq:
    task: Task


@dataclass(frozen=True)
class AssignResp:
    task_id: str
    attempt: int
    accepted: bool


@dataclass(frozen=True)
class CompleteReq:
    task_id: str
    attempt: int
    executor: str
    ok: bool
    compute_s: float


@dataclass(frozen=True)
class CompleteAck:
    task_id: str
    attempt: int


# ---- one node --------------------------------------------------------------------------


class _Node:
    def __init__(self, sim: TaskSim, name: str, speed: float) -> None:
        self.sim = sim
        self.name = name
        self.speed = speed
        cfg = sim.scenario.cfg
        self.queue = TaskQueue(name, cfg, speed)
        self.steal = StealPolicy(name, random.Random(sim.rng.random()), cfg, speed)
        self.leases = LeaseTable(name, cfg)
        self.board = LoadBoard(cfg)
        self.placement = make_placement(sim.scenario.placement)
        self.alive = True
        self.running: Task | None = None
        self.seq = 0
        #: Complete messages not yet acknowledged, by (task_id, attempt): (origin, message).
        self.unacked: dict[tuple[str, int], tuple[str, CompleteReq]] = {}
        self._wake_at: float | None = None
        self.finished_at = 0.0
        self.executed = 0

    @property
    def now(self) -> float:
        return self.sim.clock.now

    def report(self) -> LoadReport:
        self.seq += 1
        running = [self.running] if self.running else []
        q = self.queue
        return make_report(
            self.name, self.seq, q.queued(), running, 1, self.speed, [MODEL], q.stealable(self.now)
        )

    def send(self, dst: str, msg: object, size: int = SMALL) -> None:
        self.sim.net.send(self.name, dst, msg, size)

    # -- periodic work --

    def tick(self) -> None:
        if not self.alive:
            return
        report = self.report()
        for peer in self.sim.names:
            if peer != self.name:
                self.send(peer, report)
        self.apply(self.leases.tick(self.now))
        for origin, req in list(self.unacked.values()):
            self.send(origin, req)  # the ack may have been lost: retry, the origin dedupes
        self.kick()

    def kick(self) -> None:
        """Starts the next task if idle, then considers stealing."""
        if not self.alive:
            return
        if self.running is None:
            task = self.queue.pop_for_execution()
            if task is not None:
                self.start(task)
        if self.sim.stealing:
            attempt = self.steal.decide(
                self.now,
                self.queue.queued_cost_s() / self.speed,
                [MODEL],
                self.board.fresh(self.now),
            )
            if attempt is not None:
                self.sim.steal_requests += 1
                msg = StealReq(self.name, attempt.max_tasks, attempt.models, attempt.thief_speed)
                self.send(attempt.victim, msg)
            wake = self.steal.next_wakeup()
            if wake is not None and wake > self.now and wake != self._wake_at:
                self._wake_at = wake  # one pending wake-up at a time
                self.sim.clock.call_at(wake, self.kick)

    def start(self, task: Task) -> None:
        self.running = task
        self.sim.on_start(self, task)
        if task.origin == self.name:
            self.apply(self.leases.on_started(task.task_id, task.attempt, self.name, self.now))
        compute = self.sim.true_cost[task.task_id] / self.speed
        self.sim.clock.call_at(self.now + compute, lambda: self.finish(task, compute))

    def finish(self, task: Task, compute_s: float) -> None:
        if not self.alive or self.running is not task:
            return
        self.running = None
        self.queue.finish(task.task_id)
        self.finished_at = self.now
        self.executed += 1
        self.sim.runs[task.task_id] += 1
        req = CompleteReq(task.task_id, task.attempt, self.name, True, compute_s)
        if task.origin == self.name:
            self.on_complete(req)
        else:
            self.unacked[(task.task_id, task.attempt)] = (task.origin, req)
            self.send(task.origin, req)
        self.kick()

    # -- origin side --

    def submit(self, task: Task) -> None:
        self.apply(self.leases.submit(task, self.now))
        self.place(task)

    def place(self, task: Task, front: bool = False) -> None:
        dst = self.placement.choose(
            task, self.report(), self.board.fresh(self.now), self.now, self.sim.rng
        )
        if dst == self.name:
            self.queue.push(task, self.now, front=front)
        else:
            self.apply(self.leases.on_assigned(task.task_id, task.attempt, dst, self.now))
            self.send(dst, AssignReq(task), SMALL + task.input_bytes)

    def on_complete(self, req: CompleteReq) -> None:
        out = self.leases.on_complete(
            req.task_id, req.attempt, req.executor, req.ok, self.now, compute_s=req.compute_s
        )
        self.apply(out.actions)
        if req.executor != self.name:
            self.send(req.executor, CompleteAck(req.task_id, req.attempt))

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Requeue):
                self.sim.requeued(action.task, self.now)
                self.place(action.task, front=True)
            elif isinstance(action, Deliver):
                self.sim.delivered(action, self.now)
            elif (
                isinstance(action, Cancel)
                and action.node == self.name
                and self.queue.state(action.task_id) is EntryState.QUEUED
            ):
                # A superseded copy here: drop it unless already running (its result will
                # be discarded as a duplicate). Remote copies are left to finish: the wire has
                # no cancel message, and the origin dedupes.
                self.queue.remove(action.task_id)
        if actions:
            self.sim.clock.call_at(self.now, self.kick)

    # -- messages --

    def deliver(self, src: str, msg: object) -> None:
        if not self.alive:
            return
        now = self.now
        if isinstance(msg, LoadReport):
            if self.board.update(msg, now):
                self.apply(self.leases.on_report(msg, now))
        elif isinstance(msg, StealReq):
            granted, actions = hand_over(
                self.queue, self.leases, self.name, msg.thief, msg.max_tasks, msg.models,
                msg.thief_speed, now,
            )  # fmt: skip
            self.apply(actions)
            self.sim.tasks_moved += len(granted)
            for t in granted:
                self.sim.moves[(t.task_id, t.attempt)] += 1
            size = SMALL + sum(t.input_bytes for t in granted)
            self.send(msg.thief, StealResp(self.name, tuple(granted)), size)
        elif isinstance(msg, StealResp):
            for t in msg.tasks:
                self.queue.push(t, now, stolen=True)
            self.steal.on_steal_result(msg.victim, len(msg.tasks), now)
            self.kick()
        elif isinstance(msg, AssignReq):
            self.queue.push(msg.task, now)
            self.send(src, AssignResp(msg.task.task_id, msg.task.attempt, True))
            self.kick()
        elif isinstance(msg, CompleteReq):
            self.on_complete(msg)
        elif isinstance(msg, CompleteAck):
            self.unacked.pop((msg.task_id, msg.attempt), None)


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

    def on_start(self, node: _Node, task: Task) -> None:
        if task.task_id in self._awaiting_restart and self.dead_at is not None:
            self._awaiting_restart.discard(task.task_id)
            self.recovery.append(self.clock.now - self.dead_at)

    def requeued(self, task: Task, now: float) -> None:
        if self.dead_at is not None and now == self.dead_at:
            self._awaiting_restart.add(task.task_id)

    def delivered(self, action: Deliver, now: float) -> None:
        self.deliveries[action.task_id] += 1
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
        node.running = None
        node.queue = TaskQueue(name, self.scenario.cfg, node.speed)
        self.net.crash(name)
        self.clock.call_at(self.clock.now + self.scenario.detect_s, lambda: self._declare(name))

    def _declare(self, name: str) -> None:
        self.dead_at = self.clock.now
        for node in self.nodes.values():
            if node.alive:
                node.board.forget(name)
                node.steal.on_member_dead(name)
                node.apply(node.leases.on_member_dead(name, self.clock.now))

    def _ticker(self, node: _Node) -> None:
        node.tick()
        if node.alive:
            when = self.clock.now + self.scenario.report_interval_s
            self.clock.call_at(when, lambda: self._ticker(node))

    def run(self) -> SimResult:
        sc = self.scenario
        draw = self._sizes()
        # The cluster has converged before the burst: everyone knows everyone's load.
        for node in self.nodes.values():
            report = node.report()
            for peer in self.nodes.values():
                if peer is not node:
                    peer.board.update(report, 0.0)
        origin = self.nodes[self.names[0]]
        for i in range(sc.tasks):
            task = Task(
                f"{origin.name}/t{i}", origin.name, MODEL, sc.cost_s, input_bytes=sc.input_bytes
            )
            self.true_cost[task.task_id] = draw()
            origin.submit(task)
        for k, node in enumerate(self.nodes.values()):
            # Stagger the first reports so the nodes do not tick in lock step.
            offset = sc.report_interval_s * k / len(self.nodes)
            self.clock.call_at(offset, functools.partial(self._ticker, node))
        if sc.crash is not None:
            idx, at = sc.crash
            self.clock.call_at(at, lambda: self._crash(self.names[idx]))
        step = max(sc.report_interval_s, 0.01)
        while len(self.deliveries) < sc.tasks and self.clock.now < sc.time_limit_s:
            self.clock.run_until(self.clock.now + step)
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

"""Simulated membership: many pure `Swim` cores on a `SimNetwork` with a virtual clock.

One run: N members start from a converged table; at ``join_at`` a new member joins through
one seed; at ``crash_at`` a random member crashes; optionally a partition splits the cluster
for a while. The run measures how fast the join reaches everyone (``rounds_to_full``,
``seconds_to_full``), how long until every live member has declared the crashed one dead
(``detection_seconds``), how many live members were ever declared dead by anyone
(``false_positives``), whether every member agrees on the membership at the end, and the
traffic per member. Every message is encoded with the real wire codec to count its bytes.
Same seed, same output. ``simulate_mass_join`` starts every member at about the same time
instead, each knowing only the seed, and measures how soon all see all.

``python -m p2pagent.sim membership --nodes 100 --loss 0.1 --duration 120 --seed 1 --json``

For N too large for full member tables in one process (10,000: 10^8 entries), ``--spread``
runs only the dissemination layer (the core's `TransmitQueue`, retransmit limit and fanout
sampling) over a shared roster and reports the rounds one update takes to reach everyone.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from p2pagent.membership.broadcasts import TransmitQueue, retransmit_limit
from p2pagent.membership.codec import encode
from p2pagent.membership.config import MembershipConfig
from p2pagent.membership.hints import LoadHint
from p2pagent.membership.messages import Message, Send, State, Update
from p2pagent.membership.swim import Swim
from p2pagent.sim.clock import VirtualClock
from p2pagent.sim.network import LinkModel, SimNetwork


@dataclass(frozen=True)
class MembershipScenario:
    nodes: int = 50
    loss: float = 0.0
    latency: float = 0.002
    jitter: float = 0.001
    duration: float = 60.0
    join_at: float = 2.0
    crash_at: float = 20.0
    #: (start, end): the first half cannot reach the second half in between.
    partition: tuple[float, float] | None = None
    seed: int = 1
    probe_interval: float = 1.0
    gossip_interval: float = 0.2
    gossip_fanout: int = 3
    #: Mean seconds a member waits for the CPU before it runs a tick or reads a message
    #: (exponentially distributed, per event): many daemons sharing a few busy cores, whose
    #: loops run late. 0 runs every event on time.
    cpu_delay: float = 0.0
    #: Machine-wide stalls: on average every ``stall_every`` seconds every member waits
    #: ``stall_s`` for the CPU at once (other work took the cores). 0 for none.
    stall_every: float = 0.0
    stall_s: float = 0.0


@dataclass
class MembershipResult:
    nodes: int
    rounds_to_full: float | None
    seconds_to_full: float | None
    detection_seconds: float | None
    false_positives: int
    #: Seconds from the end of the partition until every member sees every live one alive.
    partition_heal_seconds: float | None
    agreed: bool
    messages_per_node_per_s: float
    bytes_per_node_per_s: float
    suspicions: int
    refutations: int
    dead_declared_wrongly: list[str] = field(default_factory=list)


def _name(i: int) -> str:
    return f"m{i:05d}"


class SimCluster:
    """Drives Swim cores: each core's next deadline is one timer on the virtual clock."""

    def __init__(self, scenario: MembershipScenario) -> None:
        self.s = scenario
        self.clock = VirtualClock()
        self.rng = random.Random(scenario.seed)
        model = LinkModel(scenario.latency, scenario.jitter, scenario.loss)
        self.net = SimNetwork(self.clock, random.Random(scenario.seed + 1), model)
        self._cpu = random.Random(scenario.seed + 2)
        self._stall_ends = self._stalls(scenario)
        self.config = MembershipConfig(
            probe_interval=scenario.probe_interval,
            probe_timeout=scenario.probe_interval / 2,
            gossip_interval=scenario.gossip_interval,
            gossip_fanout=scenario.gossip_fanout,
        ).validate()
        self.cores: dict[str, Swim] = {}
        self._wake_at: dict[str, float] = {}
        self.crashed: set[str] = set()
        #: name -> first virtual time a live member was declared dead by someone
        self.wrongly_dead: dict[str, float] = {}
        #: observer -> time it first saw the watched member reach the watched state
        self.watch: tuple[str, State] | None = None
        self.seen: dict[str, float] = {}
        #: True from a partition's start until every member sees every live one alive again:
        #: deaths declared across a partition are expected, not false positives.
        self.partitioned = False

    def add(self, name: str, seeds: list[str], incarnation: int = 1) -> Swim:
        core = Swim(
            name,
            name,
            self.config,
            random.Random(self.rng.getrandbits(64)),
            incarnation=incarnation,
            seeds=seeds,
            now=self.clock.now,
        )
        self.cores[name] = core
        self.net.register(name, lambda src, msg: self._later(lambda: self._deliver(name, msg)))
        self._wake_at[name] = float("inf")
        return core

    def _deliver(self, dst: str, msg: object) -> None:
        core = self.cores.get(dst)
        if core is None or dst in self.crashed:
            return
        assert isinstance(msg, Message)
        self._after(dst, core.handle(msg, self.clock.now))

    def _after(self, name: str, sends: list[Send]) -> None:
        now = self.clock.now
        for send in sends:
            self.net.send(name, send.address, send.message, len(encode(send.message)))
        core = self.cores[name]
        for view in core.take_events():
            self._observe(name, view.name, State(view.state), now)
        t = core.next_deadline()
        if t < self._wake_at[name]:
            self._wake_at[name] = t
            self.clock.call_at(t + self._stall(), lambda: self._wake(name, t))

    @staticmethod
    def _stalls(s: MembershipScenario) -> list[tuple[float, float]]:
        if s.stall_every <= 0 or s.stall_s <= 0:
            return []
        rng = random.Random(s.seed + 3)
        out: list[tuple[float, float]] = []
        t = rng.expovariate(1 / s.stall_every)
        while t < s.duration:
            out.append((t, t + s.stall_s))
            t += s.stall_s + rng.expovariate(1 / s.stall_every)
        return out

    def _stall(self) -> float:
        """How long the member waits for the CPU this time (``cpu_delay``, ``stall_every``)."""
        now = self.clock.now
        wait = 0.0
        i = bisect.bisect_right(self._stall_ends, (now, math.inf)) - 1
        if i >= 0 and self._stall_ends[i][0] <= now < self._stall_ends[i][1]:
            wait = self._stall_ends[i][1] - now
        mean = self.s.cpu_delay
        return wait + (self._cpu.expovariate(1 / mean) if mean > 0 else 0.0)

    def _later(self, fn: Callable[[], None]) -> None:
        delay = self._stall()
        if delay > 0:
            self.clock.call_later(delay, fn)
        else:
            fn()

    def _wake(self, name: str, t: float) -> None:
        if self._wake_at.get(name) != t or name in self.crashed:
            return
        self._wake_at[name] = float("inf")
        self._after(name, self.cores[name].tick(self.clock.now))

    def _observe(self, observer: str, subject: str, state: State, now: float) -> None:
        if observer in self.crashed:
            return
        if (
            state is State.DEAD
            and not self.partitioned
            and subject not in self.crashed
            and subject in self.cores
        ):
            self.wrongly_dead.setdefault(subject, now)
        if self.watch is not None and (subject, state) == self.watch and observer != subject:
            self.seen.setdefault(observer, now)

    def start(self, name: str, sends: list[Send]) -> None:
        self._after(name, sends)

    def crash(self, name: str) -> None:
        self.crashed.add(name)
        self.net.crash(name)

    def live(self) -> list[str]:
        return [n for n in self.cores if n not in self.crashed]

    def agreed(self) -> bool:
        """Every live member sees exactly the live members as reachable."""
        live = set(self.live())
        for n in live:
            core = self.cores[n]
            seen = {m.name for m in core.members() if m.reachable}
            if seen != live:
                return False
        return True

    def all_see_alive(self) -> bool:
        live = self.live()
        for n in live:
            core = self.cores[n]
            for other in live:
                if core.state_of(other) is not State.ALIVE:
                    return False
        return True


def simulate(s: MembershipScenario) -> MembershipResult:
    sim = SimCluster(s)
    names = [_name(i) for i in range(s.nodes)]
    roster = [Update(n, 1, State.ALIVE, n, n) for n in names]
    for n in names:
        sim.add(n, [names[0]]).restore(roster, 0.0)
    for n in names:
        sim.start(n, [])
    clock = sim.clock

    # A join through one seed; its spreading is measured from the moment the seed adds it.
    joiner = _name(s.nodes)
    join_done: dict[str, float] = {}

    def do_join() -> None:
        sim.watch = (joiner, State.ALIVE)
        sim.seen = join_done
        core = sim.add(joiner, [names[0]])
        sim.start(joiner, core.join(clock.now))

    clock.call_at(s.join_at, do_join)

    victim = sim.rng.choice(names[1:]) if s.nodes > 1 else names[0]
    detect: dict[str, float] = {}

    def do_crash() -> None:
        sim.watch = (victim, State.DEAD)
        sim.seen = detect
        sim.crash(victim)

    if s.crash_at < s.duration:
        clock.call_at(s.crash_at, do_crash)
    if s.partition is not None:
        half = names[: s.nodes // 2]
        start, end = s.partition

        def split() -> None:
            sim.partitioned = True
            sim.net.partition(half, [*names[s.nodes // 2 :], joiner])

        clock.call_at(start, split)
        clock.call_at(end, sim.net.heal)

    heal_at: float | None = None
    t = 0.0
    while t < s.duration:
        t = min(s.duration, t + 0.5)
        clock.run_until(t)
        if (
            s.partition is not None
            and heal_at is None
            and t >= s.partition[1]
            and sim.all_see_alive()
        ):
            heal_at = t
            sim.partitioned = False
    # Spreading of the join: from the seed's first sight of it to the last live member's.
    seconds_to_full = rounds = None
    live = set(sim.live())
    if joiner in sim.cores and live <= set(join_done) | {joiner}:
        first = min(join_done.values())
        seconds_to_full = max(v for k, v in join_done.items() if k in live) - first
        rounds = round(seconds_to_full / s.gossip_interval, 2)
    detection = None
    if s.crash_at < s.duration and (live - {victim}) <= set(detect):
        detection = round(max(detect[n] for n in live) - s.crash_at, 3)
    stats = sim.net.stats.values()
    members = len(sim.cores)
    span = max(s.duration, 1e-9)
    return MembershipResult(
        nodes=s.nodes,
        rounds_to_full=rounds,
        seconds_to_full=None if seconds_to_full is None else round(seconds_to_full, 3),
        detection_seconds=detection,
        false_positives=len(sim.wrongly_dead),
        partition_heal_seconds=(
            None if heal_at is None or s.partition is None else round(heal_at - s.partition[1], 2)
        ),
        agreed=sim.agreed(),
        messages_per_node_per_s=round(sum(x.messages_sent for x in stats) / members / span, 2),
        bytes_per_node_per_s=round(sum(x.bytes_sent for x in stats) / members / span, 1),
        suspicions=sum(c.counters.suspicions for c in sim.cores.values()),
        refutations=sum(c.counters.refutations for c in sim.cores.values()),
        dead_declared_wrongly=sorted(sim.wrongly_dead),
    )


@dataclass
class SpreadResult:
    nodes: int
    rounds_to_full: int
    seconds_to_full: float
    messages: int


def simulate_spread(
    nodes: int, fanout: int, interval: float, loss: float, seed: int
) -> SpreadResult:
    """One update spreading over ``nodes`` members by fanout gossip alone (no piggybacking on
    probes: a conservative bound), using the core's queue and retransmit limit."""
    rng = random.Random(seed)
    limit = retransmit_limit(MembershipConfig().retransmit_mult, nodes)
    update = Update(_name(0), 2, State.ALIVE, _name(0), _name(0))
    queues: dict[int, TransmitQueue] = {0: TransmitQueue()}
    queues[0].put(update)
    has = {0}
    rounds = messages = 0
    while len(has) < nodes and rounds < 1000:
        rounds += 1
        arrivals: list[int] = []
        for i in [i for i, q in queues.items() if q]:
            for _ in range(fanout):
                j = rng.randrange(nodes - 1)
                j = j + 1 if j >= i else j
                if not queues[i].take(16, limit, skip=_name(j)):
                    break
                messages += 1
                if rng.random() >= loss:
                    arrivals.append(j)
        for j in arrivals:
            if j not in has:
                has.add(j)
                queues[j] = TransmitQueue()
                queues[j].put(update)
    return SpreadResult(nodes, rounds, round(rounds * interval, 3), messages)


@dataclass
class HintSpreadResult:
    nodes: int
    #: Virtual seconds from publishing until every live member holds the hint (None: never).
    seconds_to_full: float | None
    #: Messages and bytes per member per second over the run (idle traffic included).
    messages_per_node_per_s: float
    bytes_per_node_per_s: float


def simulate_hint_spread(s: MembershipScenario, hint: LoadHint) -> HintSpreadResult:
    """One member publishes ``hint`` (urgently) at ``s.join_at`` on an otherwise idle mesh;
    how soon does every member hold it? Through the shipped cores and codec, like
    ``simulate``; ``s.loss`` applies to every message."""
    sim = SimCluster(s)
    names = [_name(i) for i in range(s.nodes)]
    roster = [Update(n, 1, State.ALIVE, n, n) for n in names]
    for n in names:
        sim.add(n, [names[0]]).restore(roster, 0.0)
    for n in names:
        sim.start(n, [])
    publisher = names[-1]
    sim.clock.call_at(
        s.join_at,
        lambda: sim.start(publisher, sim.cores[publisher].publish_hint(hint, sim.clock.now, True)),
    )
    full: float | None = None
    t = 0.0
    while t < s.duration:
        t = min(s.duration, t + 0.05)
        sim.clock.run_until(t)
        held = (
            full is None
            and t >= s.join_at
            and all(any(h.node == publisher for h in c.hints()) for c in sim.cores.values())
        )
        if held:
            full = round(t - s.join_at, 3)
    stats = sim.net.stats.values()
    span = max(s.duration, 1e-9)
    return HintSpreadResult(
        nodes=s.nodes,
        seconds_to_full=full,
        messages_per_node_per_s=round(sum(x.messages_sent for x in stats) / s.nodes / span, 2),
        bytes_per_node_per_s=round(sum(x.bytes_sent for x in stats) / s.nodes / span, 1),
    )


@dataclass
class MassJoinResult:
    nodes: int
    #: Virtual seconds from the last member's join until every member sees every other alive
    #: (None: not within the limit).
    seconds_to_full: float | None
    #: Push-pull exchanges started per member (the join's own, catch-ups, answers to unknown
    #: senders, periodic ones), and members declared dead though none crashed.
    push_pulls_per_node: float
    false_positives: int


def simulate_mass_join(
    s: MembershipScenario, start_over_s: float, limit_s: float
) -> MassJoinResult:
    """Every member starts and joins through the first one, at random times over
    ``start_over_s`` virtual seconds (real daemons started at once become ready over a few
    seconds), and nobody knows anybody before. ``s.loss`` applies to every message."""
    sim = SimCluster(s)
    names = [_name(i) for i in range(s.nodes)]
    starts = {n: 0.0 if i == 0 else sim.rng.uniform(0.0, start_over_s) for i, n in enumerate(names)}

    def start(name: str) -> None:
        core = sim.add(name, [] if name == names[0] else [names[0]])
        sim.start(name, core.join(sim.clock.now))

    for name in names:
        sim.clock.call_at(starts[name], functools.partial(start, name))
    last = max(starts.values())
    full: float | None = None
    t = last
    sim.clock.run_until(t)
    while t < last + limit_s:
        t += 0.25
        sim.clock.run_until(t)
        if sim.all_see_alive():
            full = round(t - last, 2)
            break
    return MassJoinResult(
        nodes=s.nodes,
        seconds_to_full=full,
        push_pulls_per_node=round(
            sum(c.counters.push_pulls for c in sim.cores.values()) / s.nodes, 2
        ),
        false_positives=len(sim.wrongly_dead),
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m p2pagent.sim membership", description=__doc__)
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--loss", type=float, default=0.0, help="packet loss on every link, 0-1")
    p.add_argument("--duration", type=float, default=60.0, help="simulated seconds")
    p.add_argument("--join-at", type=float, default=2.0)
    p.add_argument("--crash-at", type=float, default=20.0)
    p.add_argument("--partition", default="", help="START:END simulated seconds")
    p.add_argument("--fanout", type=int, default=3)
    p.add_argument("--gossip-interval", type=float, default=0.2)
    p.add_argument("--probe-interval", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cpu-delay", type=float, default=0.0, help="mean CPU wait per event, s")
    p.add_argument("--spread", action="store_true", help="dissemination only, for huge N")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.nodes < 2 or not 0 <= args.loss < 1:
        p.error("--nodes must be >= 2 and --loss in [0, 1)")
    started = time.perf_counter()
    result: MembershipResult | SpreadResult
    if args.spread:
        result = simulate_spread(
            args.nodes, args.fanout, args.gossip_interval, args.loss, args.seed
        )
    else:
        partition = None
        if args.partition:
            a, _, b = args.partition.partition(":")
            partition = (float(a), float(b))
        result = simulate(
            MembershipScenario(
                nodes=args.nodes,
                loss=args.loss,
                duration=args.duration,
                join_at=args.join_at,
                crash_at=args.crash_at,
                partition=partition,
                seed=args.seed,
                probe_interval=args.probe_interval,
                gossip_interval=args.gossip_interval,
                gossip_fanout=args.fanout,
                cpu_delay=args.cpu_delay,
            )
        )
    print(f"wall {time.perf_counter() - started:.1f}s", file=sys.stderr)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        for k, v in asdict(result).items():
            print(f"{k}: {v}")
    return 0

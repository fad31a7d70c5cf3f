"""Simulated parameter averaging: many pure ``Averager`` cores on a ``SimNetwork``.

Each member holds a random parameter vector and a sample count. Every member runs rounds in
a loop: local "training" (``step_s``, times ``straggler_factor`` for the slow ones), then an
averaging round with the participants it believes alive, starting round ``r`` no earlier
than ``r x round_interval_s``. Members crash mid-round
(``crash_per_round`` of them, at a random moment inside the round's first phase); the
survivors hear of it ``detect_s`` later, as SWIM would tell them. The run measures the spread
of parameters across live members after each round (root mean square distance to their
mean), whether the members of each fault-free group ended bit-identical, the bytes each
member sent per round against the all-reduce bound, and round durations. Same seed, same
output.

``python -m p2pagent.sim training --members 256 --group-size 16 --crash 0.05 --rounds 3``
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import random
from dataclasses import asdict, dataclass, field

import numpy as np

from p2pagent.sim.clock import VirtualClock
from p2pagent.sim.network import LinkModel, SimNetwork
from p2pagent.training.averager import Averager
from p2pagent.training.config import TrainingConfig
from p2pagent.training.messages import Part, Refused, RoundDone, Send, Vector

RUN = "sim"
SPEC = "sim-spec"


@dataclass(frozen=True)
class TrainingScenario:
    members: int = 16
    group_size: int = 16
    params: int = 1024
    rounds: int = 3
    #: Fraction of live members that crash during each round.
    crash_per_round: float = 0.0
    #: Members (the first ones in name order) whose local steps and links are slower.
    stragglers: int = 0
    straggler_factor: float = 3.0
    #: Seconds of local training between rounds (times ``straggler_factor`` for the slow).
    step_s: float = 0.1
    #: Members start round ``r`` at ``r x round_interval_s`` (plus a small jitter), or when
    #: their previous round and local step are done if that is later: a loop that averages
    #: every N steps on machines of about the same speed.
    round_interval_s: float = 2.0
    #: Crashes happen at a random moment this many seconds after a round's first start.
    crash_window_s: float = 0.02
    latency: float = 0.002
    jitter: float = 0.001
    #: Bytes per second each link carries (a part's transfer time is its size over this).
    bandwidth: float = 1e9
    #: Seconds until survivors hear of a crash from membership (None: never told).
    detect_s: float | None = 0.5
    initial_phase_timeout: float = 1.0
    min_phase_timeout: float = 0.05
    compression: str = "none"
    seed: int = 1


@dataclass
class RoundStats:
    round_no: int
    spread: float
    live: int
    complete_members: int
    #: Groups whose members all finished with bit-identical vectors / groups seen.
    agreeing_groups: int
    groups: int
    max_duration_s: float
    #: Largest bytes one member sent in the round, over the all-reduce bound for its group.
    worst_traffic_ratio: float
    refused: int


@dataclass
class TrainingResult:
    initial_spread: float
    rounds: list[RoundStats] = field(default_factory=list)
    crashed: int = 0
    digest: str = ""

    @property
    def shrink(self) -> float:
        last = self.rounds[-1].spread if self.rounds else self.initial_spread
        return self.initial_spread / last if last > 0 else float("inf")


def spread(vectors: list[Vector]) -> float:
    """Root mean square distance of the vectors to their mean."""
    stack = np.stack([v.astype(np.float64) for v in vectors])
    return float(np.sqrt(((stack - stack.mean(axis=0)) ** 2).sum(axis=1).mean()))


class _Sim:
    def __init__(self, sc: TrainingScenario) -> None:
        self.sc = sc
        self.rng = random.Random(sc.seed)
        self.clock = VirtualClock()
        self.net = SimNetwork(self.clock, self.rng, LinkModel(sc.latency, sc.jitter))
        self.config = TrainingConfig(
            group_size=sc.group_size,
            initial_phase_timeout=sc.initial_phase_timeout,
            min_phase_timeout=sc.min_phase_timeout,
            compression=sc.compression,
        ).validate()
        np_rng = np.random.default_rng(sc.seed)
        self.names = [f"m{i:04d}" for i in range(sc.members)]
        self.slow = set(self.names[: sc.stragglers])
        self.vectors: dict[str, Vector] = {
            n: np_rng.standard_normal(sc.params).astype(np.float32) for n in self.names
        }
        self.weights = {n: float(self.rng.randint(50, 500)) for n in self.names}
        self.averagers = {n: Averager(n, RUN, SPEC, self.config) for n in self.names}
        self.alive = set(self.names)
        self.done: dict[int, dict[str, RoundDone]] = {}
        self.refused: dict[int, int] = {}
        self.crash_planned: set[int] = set()
        self.crashed = 0
        #: Crashed members the survivors have not heard of yet: still in their views.
        self._undetected: set[str] = set()
        for n in self.names:
            self.net.register(n, functools.partial(self._deliver, n))

    # ---- members ----------------------------------------------------------------------------

    def _factor(self, name: str) -> float:
        return self.sc.straggler_factor if name in self.slow else 1.0

    def _begin(self, name: str) -> None:
        if name not in self.alive:
            return
        av = self.averagers[name]
        if av.next_round_no() >= self.sc.rounds:
            return
        round_no = av.next_round_no()
        if round_no not in self.crash_planned:
            self.crash_planned.add(round_no)
            self._plan_crashes()
        sends = av.begin(self._view(name), self.vectors[name], self.weights[name], self.clock.now)
        self._after(name, sends)

    def _plan_crashes(self) -> None:
        count = round(len(self.alive) * self.sc.crash_per_round)
        for victim in self.rng.sample(sorted(self.alive), count):
            at = self.clock.now + self.rng.uniform(0, self.sc.crash_window_s)
            self.clock.call_at(at, functools.partial(self._crash, victim))

    def _view(self, name: str) -> list[str]:
        """The participants ``name`` believes in: the live ones and the crashed ones nobody
        has heard of yet (every member has the same view here)."""
        return sorted(self.alive | self._undetected)

    def _crash(self, name: str) -> None:
        if name not in self.alive:
            return
        self.alive.discard(name)
        self.net.crash(name)
        self.crashed += 1
        self._undetected.add(name)
        if self.sc.detect_s is not None:
            self.clock.call_later(self.sc.detect_s, functools.partial(self._detected, name))

    def _detected(self, name: str) -> None:
        self._undetected.discard(name)
        for n in sorted(self.alive):
            self._after(n, self.averagers[n].member_gone(name, self.clock.now))

    def _deliver(self, dst: str, src: str, msg: object) -> None:
        if dst not in self.alive or not isinstance(msg, Part):
            return
        self._after(dst, self.averagers[dst].handle(msg, self.clock.now))

    def _after(self, name: str, sends: list[Send]) -> None:
        for s in sends:
            delay = s.part.nbytes / self.sc.bandwidth * self._factor(name)
            self.clock.call_later(
                delay + self.sc.latency * (self._factor(name) - 1),
                functools.partial(self.net.send, name, s.to, s.part, s.part.nbytes),
            )
        av = self.averagers[name]
        for ev in av.take_events():
            if isinstance(ev, Refused):
                self.refused[ev.round_no] = self.refused.get(ev.round_no, 0) + 1
            elif isinstance(ev, RoundDone):
                self._round_done(name, ev)
        deadline = av.next_deadline()
        if deadline != float("inf"):
            self.clock.call_at(deadline, functools.partial(self._tick, name, deadline))

    def _round_done(self, name: str, ev: RoundDone) -> None:
        self.vectors[name] = ev.vector
        self.done.setdefault(ev.round_no, {})[name] = ev
        slot = (ev.round_no + 1) * self.sc.round_interval_s + self.rng.uniform(0, 0.01)
        at = max(self.clock.now + self.sc.step_s * self._factor(name), slot)
        self.clock.call_at(at, functools.partial(self._begin, name))

    def _tick(self, name: str, at: float) -> None:
        av = self.averagers[name]
        if name in self.alive and av.next_deadline() <= self.clock.now:
            self._after(name, av.tick(self.clock.now))

    # ---- the run ----------------------------------------------------------------------------

    def run(self) -> TrainingResult:
        result = TrainingResult(initial_spread=spread(list(self.vectors.values())))
        for n in self.names:
            self.clock.call_at(self.rng.uniform(0, 0.01), functools.partial(self._begin, n))
        self.clock.run_until_idle(limit=3600.0)
        for r in range(self.sc.rounds):
            result.rounds.append(self._round_stats(r))
        result.crashed = self.crashed
        h = hashlib.sha256()
        for n in sorted(self.alive):
            h.update(self.vectors[n].tobytes())
        result.digest = h.hexdigest()[:16]
        return result

    def _round_stats(self, r: int) -> RoundStats:
        done = self.done.get(r, {})
        live = {n: d for n, d in done.items() if n in self.alive}
        by_group: dict[tuple[str, ...], list[RoundDone]] = {}
        for d in live.values():
            by_group.setdefault(d.group, []).append(d)
        agreeing = sum(1 for ds in by_group.values() if len({d.vector.tobytes() for d in ds}) == 1)
        ratio = 0.0
        param_bytes = self.sc.params * 4
        for d in done.values():
            k = len(d.group)
            if k > 1:
                ratio = max(ratio, d.bytes_sent / (2 * (k - 1) / k * param_bytes))
        vectors = [d.vector for d in live.values()]
        return RoundStats(
            round_no=r,
            spread=spread(vectors) if vectors else 0.0,
            live=len(live),
            complete_members=sum(1 for d in live.values() if d.complete),
            agreeing_groups=agreeing,
            groups=len(by_group),
            max_duration_s=max((d.finished - d.started for d in done.values()), default=0.0),
            worst_traffic_ratio=ratio,
            refused=self.refused.get(r, 0),
        )


def simulate(sc: TrainingScenario) -> TrainingResult:
    return _Sim(sc).run()


def main(argv: list[str] | None = None) -> int:
    """``python -m p2pagent.sim training [options]``: one run, printed as a table or JSON."""
    p = argparse.ArgumentParser(prog="python -m p2pagent.sim training", description=__doc__)
    p.add_argument("--members", type=int, default=16)
    p.add_argument("--group-size", type=int, default=16)
    p.add_argument("--params", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--crash", type=float, default=0.0, help="fraction crashing per round")
    p.add_argument("--stragglers", type=int, default=0)
    p.add_argument("--straggler-factor", type=float, default=3.0)
    p.add_argument("--compression", choices=("none", "fp16"), default="none")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = simulate(
        TrainingScenario(
            members=args.members,
            group_size=args.group_size,
            params=args.params,
            rounds=args.rounds,
            crash_per_round=args.crash,
            stragglers=args.stragglers,
            straggler_factor=args.straggler_factor,
            compression=args.compression,
            seed=args.seed,
        )
    )
    if args.json:
        print(json.dumps({**asdict(result), "shrink": result.shrink}))
    else:
        print(f"initial spread {result.initial_spread:.4g}, crashed {result.crashed}")
        for s in result.rounds:
            print(
                f"round {s.round_no}: spread {s.spread:.4g}, live {s.live}, complete "
                f"{s.complete_members}, agreeing groups {s.agreeing_groups}/{s.groups}, "
                f"longest {s.max_duration_s:.3f}s, traffic {s.worst_traffic_ratio:.3f}x bound, "
                f"refused {s.refused}"
            )
        print(f"spread shrank {result.shrink:.4g}x")
    return 0

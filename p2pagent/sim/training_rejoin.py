"""A member restarted in the middle of a run, in the simulator on the same averaging core.

Short rounds back to back (the digits run's ~90 ms), one member crashed at the start of round
``kill_round`` and restarted ``restart_s`` later with a fresh core (round counter 0, no
measured deadlines), as a SIGKILLed daemon comes back. What membership tells the others is
modelled after SWIM on a small mesh: the crash is noticed ``detect_s`` later (as a death),
unless the new incarnation arrives first; the new incarnation carries no run tag until its
loop averages again, so each survivor drops the member from its view when it hears of the new
incarnation and takes it back when the tag reaches it, each after its own gossip delay
(``gossip_s``: uniform between the two bounds). The restarted member knows every survivor's
tag at once (a join copies the whole membership).

The run measures, from the restarted member's rounds numbered after the one it crashed in,
how many it took until one was complete (it ends holding the run's average) and until one
averaged its own parameters in (it was in the round's group and complete).

``python -m p2pagent.sim training-rejoin --seeds 20``
"""

from __future__ import annotations

import argparse
import functools
import json
import random
from dataclasses import asdict, dataclass, field

from p2pagent.sim.training import RUN, SPEC, TrainingScenario, _Sim
from p2pagent.training.averager import Averager
from p2pagent.training.messages import RoundDone


@dataclass(frozen=True)
class RejoinScenario:
    members: int = 4
    rounds: int = 160
    kill_round: int = 60
    #: Seconds from the crash until the member's new daemon is up and its loop averages.
    restart_s: float = 2.0
    #: Seconds until the survivors hear of the crash as a death (SWIM's suspicion timeout).
    detect_s: float = 5.0
    #: Bounds of one survivor's delay to hear a membership change of the restarted member.
    gossip_s: tuple[float, float] = (0.02, 0.4)
    #: Seconds of local training between rounds (with the round: the digits run's ~90 ms).
    step_s: float = 0.08
    params: int = 1000
    latency: float = 0.001
    jitter: float = 0.0005
    initial_phase_timeout: float = 10.0
    min_phase_timeout: float = 1.0
    seed: int = 1


@dataclass
class RejoinResult:
    #: The restarted member's rounds after the one it crashed in: (round, complete, in group).
    rounds: list[tuple[int, bool, bool]] = field(default_factory=list)
    #: Rounds until one was complete / until one averaged its parameters in (99: never).
    back: int = 99
    contributed: int = 99
    #: The longest round a survivor ran after the restart (seconds).
    longest_survivor_round_s: float = 0.0


class _RejoinSim(_Sim):
    def __init__(self, rs: RejoinScenario) -> None:
        super().__init__(
            TrainingScenario(
                members=rs.members,
                group_size=max(rs.members, 2),
                params=rs.params,
                rounds=rs.rounds,
                step_s=rs.step_s,
                round_interval_s=0.0,
                latency=rs.latency,
                jitter=rs.jitter,
                detect_s=None,
                initial_phase_timeout=rs.initial_phase_timeout,
                min_phase_timeout=rs.min_phase_timeout,
                seed=rs.seed,
            )
        )
        self.rs = rs
        self.victim = self.names[-1]
        self.survivors = self.names[:-1]
        self.gossip = random.Random(rs.seed * 7919)
        #: Survivors whose view holds the victim as a participant now.
        self.sees = set(self.survivors)
        self.restarted_at = float("inf")
        self.victim_rounds: list[RoundDone] = []
        self.survivor_rounds: list[RoundDone] = []
        self._kill_planned = False

    def _view(self, name: str) -> list[str]:
        if name == self.victim:
            return sorted(self.alive)
        return sorted(n for n in self.names if n != self.victim or name in self.sees)

    def _begin(self, name: str) -> None:
        starting = self.averagers[name].next_round_no()
        if not self._kill_planned and name != self.victim and starting == self.rs.kill_round:
            self._kill_planned = True
            self.clock.call_later(0.001, self._kill)
        super()._begin(name)

    def _kill(self) -> None:
        self.alive.discard(self.victim)
        self.net.crash(self.victim)
        self.crashed += 1
        self.clock.call_later(self.rs.detect_s, self._detected_death)
        self.clock.call_later(self.rs.restart_s, self._restart)

    def _detected_death(self) -> None:
        if self.clock.now >= self.restarted_at:
            return  # the new incarnation came first: SWIM never declares it dead
        for s in self.survivors:
            self.sees.discard(s)
            self._after(s, self.averagers[s].member_gone(self.victim, self.clock.now))

    def _restart(self) -> None:
        v = self.victim
        self.restarted_at = self.clock.now
        self.alive.add(v)
        self.net.restart(v)
        self.averagers[v] = Averager(v, RUN, SPEC, self.config)
        # The new incarnation, without the run's tag, reaches each survivor; then the tag,
        # set when the member's loop averages again (never before the incarnation itself).
        tagged = self.clock.now + self.sc.step_s
        for s in self.survivors:
            untagged = self.clock.now + self.gossip.uniform(*self.rs.gossip_s)
            self.clock.call_at(untagged, functools.partial(self.sees.discard, s))
            seen = max(untagged, tagged + self.gossip.uniform(*self.rs.gossip_s))
            self.clock.call_at(seen, functools.partial(self.sees.add, s))
        self.clock.call_at(tagged, functools.partial(self._begin, v))

    def _round_done(self, name: str, ev: RoundDone) -> None:
        super()._round_done(name, ev)
        if self.clock.now >= self.restarted_at:
            (self.victim_rounds if name == self.victim else self.survivor_rounds).append(ev)

    def outcome(self) -> RejoinResult:
        for n in self.names:
            self.clock.call_at(self.rng.uniform(0, 0.01), functools.partial(self._begin, n))
        self.clock.run_until_idle(limit=3600.0)
        out = RejoinResult()
        after = [d for d in self.victim_rounds if d.round_no > self.rs.kill_round]
        out.rounds = [(d.round_no, d.complete, self.victim in d.group) for d in after]
        out.back = next((i + 1 for i, d in enumerate(after) if d.complete), 99)
        out.contributed = next(
            (i + 1 for i, d in enumerate(after) if d.complete and self.victim in d.group), 99
        )
        out.longest_survivor_round_s = max(
            (d.finished - d.started for d in self.survivor_rounds), default=0.0
        )
        return out


def simulate_rejoin(rs: RejoinScenario) -> RejoinResult:
    return _RejoinSim(rs).outcome()


def main(argv: list[str] | None = None) -> int:
    """``python -m p2pagent.sim training-rejoin [options]``: one run per seed."""
    p = argparse.ArgumentParser(prog="python -m p2pagent.sim training-rejoin", description=__doc__)
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--restart-s", type=float, default=2.0)
    p.add_argument("--detect-s", type=float, default=5.0)
    p.add_argument("--gossip-max-s", type=float, default=0.4)
    p.add_argument("--seeds", type=int, default=10, help="runs, seeds 1..N")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    results = []
    for seed in range(1, args.seeds + 1):
        rs = RejoinScenario(
            members=args.members,
            restart_s=args.restart_s,
            detect_s=args.detect_s,
            gossip_s=(0.02, args.gossip_max_s),
            seed=seed,
        )
        results.append(simulate_rejoin(rs))
    if args.json:
        print(json.dumps([asdict(r) for r in results]))
    else:
        for seed, r in enumerate(results, 1):
            print(
                f"seed {seed}: back after {r.back} round(s), contributing after "
                f"{r.contributed}; survivors' longest round {r.longest_survivor_round_s:.2f}s; "
                f"rounds {r.rounds[:6]}"
            )
    print(f"worst: back {max(r.back for r in results)}, contributing "
          f"{max(r.contributed for r in results)}")  # fmt: skip
    return 0

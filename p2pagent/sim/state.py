"""Simulated replicated state: several pure ``Replica`` cores on a ``SimNetwork``.

Writes (LWW puts, counter increments, set adds/removes, deletes) land on random nodes while
the network delays, duplicates, reorders and loses messages, and optionally partitions the
mesh or keeps a late joiner away. Every message crosses the real wire codec. After the writes
stop and the network heals, the run measures how long anti-entropy takes until every replica
has the same state digest, and checks the counters against the exact totals written.

``python -m p2pagent.sim state --nodes 8 --writes 3000 --loss 0.1 --partition 1:4``
"""

from __future__ import annotations

import argparse
import functools
import json
import random
from dataclasses import asdict, dataclass, field

from p2pagent.sim.clock import VirtualClock
from p2pagent.sim.network import LinkModel, SimNetwork
from p2pagent.state.codec import decode_message, encode_message
from p2pagent.state.config import StateConfig
from p2pagent.state.messages import Message
from p2pagent.state.replica import Replica


@dataclass(frozen=True)
class StateScenario:
    nodes: int = 5
    keys: int = 200
    writes: int = 2000
    #: Writes are spread evenly over this many virtual seconds.
    write_window: float = 5.0
    loss: float = 0.05
    duplicate: float = 0.05
    #: (start, end) virtual seconds during which the first half is cut off from the rest.
    partition: tuple[float, float] | None = None
    #: Virtual second at which the last node joins with an empty state (None: from the start).
    join_at: float | None = None
    max_message_bytes: int = 64 * 1024
    gossip_interval: float = 0.1
    anti_entropy_interval: float = 0.5
    #: Give up waiting for convergence this many virtual seconds after the writes end.
    settle_limit: float = 60.0
    seed: int = 1


@dataclass
class StateResult:
    converged: bool
    #: Virtual seconds from the end of writes (and partition) to identical digests.
    converge_s: float | None
    counters_exact: bool
    keys: int
    messages: int
    bytes: int
    largest_message: int
    digests: list[str] = field(default_factory=list)


class StateSim:
    def __init__(self, sc: StateScenario) -> None:
        self.sc = sc
        self.rng = random.Random(sc.seed)
        self.clock = VirtualClock(1_000.0)
        self.net = SimNetwork(
            self.clock, random.Random(sc.seed + 1), LinkModel(loss=sc.loss, duplicate=sc.duplicate)
        )
        config = StateConfig(
            max_message_bytes=sc.max_message_bytes,
            max_key_bytes=256,
            gossip_interval=sc.gossip_interval,
            anti_entropy_interval=sc.anti_entropy_interval,
        )
        self.names = [f"s{i}" for i in range(sc.nodes)]
        self.replicas = {
            n: Replica(n, config, random.Random(sc.seed * 7919 + i))
            for i, n in enumerate(self.names)
        }
        self.joined = set(self.names if sc.join_at is None else self.names[:-1])
        self.largest = 0
        self.totals: dict[str, int] = {}

    # -- wiring --

    def _membership(self) -> None:
        for n in self.joined:
            self.replicas[n].on_membership(self.joined)

    def _send(self, src: str, dst: str, msg: Message) -> None:
        data = encode_message(msg)
        self.largest = max(self.largest, len(data))
        self.net.send(src, dst, data, len(data))

    def _deliver(self, name: str, src: str, payload: object) -> None:
        if name not in self.joined or not isinstance(payload, bytes):
            return
        replica = self.replicas[name]
        _, replies = replica.handle(decode_message(payload), self.clock.now)
        for reply in replies:
            self._send(name, src, reply)

    def _tick(self, name: str) -> None:
        replica = self.replicas[name]
        if name in self.joined:
            for out in replica.tick(self.clock.now):
                self._send(name, out.peer, out.message)
        self.clock.call_at(
            max(replica.next_tick_at(), self.clock.now + 0.01), lambda: self._tick(name)
        )

    def _join_last(self) -> None:
        self.joined.add(self.names[-1])
        self._membership()

    def _write(self) -> None:
        name = self.rng.choice(sorted(self.joined))
        r = self.replicas[name]
        key = f"k{self.rng.randrange(self.sc.keys):05d}"
        roll = self.rng.random()
        # One namespace per kind, so no write hits a key of another kind.
        if roll < 0.5:
            r.put_lww("lww", key, self.rng.randbytes(self.rng.randint(1, 200)), self.clock.now)
        elif roll < 0.7:
            delta = self.rng.randint(-5, 10)
            r.increment("ctr", key, delta)
            self.totals[key] = self.totals.get(key, 0) + delta
        elif roll < 0.85:
            r.set_add("set", key, [bytes([self.rng.randrange(8)])])
        elif roll < 0.95:
            r.set_remove("set", key, [bytes([self.rng.randrange(8)])])
        else:
            r.delete("lww", key)

    # -- run --

    def run(self) -> StateResult:
        sc = self.sc
        for n in self.names:
            self.net.register(n, functools.partial(self._deliver, n))
            self.clock.call_later(
                self.rng.random() * sc.gossip_interval, functools.partial(self._tick, n)
            )
        self._membership()
        start = self.clock.now
        for i in range(sc.writes):
            self.clock.call_at(start + sc.write_window * i / max(sc.writes, 1), self._write)
        calm = start + sc.write_window
        if sc.partition is not None:
            half = self.names[: sc.nodes // 2]
            a, b = sc.partition
            self.clock.call_at(
                start + a, lambda: self.net.partition(half, self.names[sc.nodes // 2 :])
            )
            self.clock.call_at(start + b, self.net.heal)
            calm = max(calm, start + b)
        if sc.join_at is not None:
            self.clock.call_at(start + sc.join_at, self._join_last)
            calm = max(calm, start + sc.join_at)
        self.clock.run_until(calm)
        converged_at = None
        while self.clock.now < calm + sc.settle_limit:
            self.clock.run_until(self.clock.now + 0.25)
            if len({r.state_digest() for r in self.replicas.values()}) == 1:
                converged_at = self.clock.now
                break
        digests = sorted({r.state_digest() for r in self.replicas.values()})
        exact = all(
            r.get("ctr", k).counter == total
            for r in self.replicas.values()
            for k, total in self.totals.items()
        )
        stats = self.net.stats.values()
        return StateResult(
            converged=converged_at is not None,
            converge_s=None if converged_at is None else round(converged_at - calm, 3),
            counters_exact=exact,
            keys=self.replicas[self.names[0]].key_count,
            messages=sum(s.messages_sent for s in stats),
            bytes=sum(s.bytes_sent for s in stats),
            largest_message=self.largest,
            digests=digests,
        )


def simulate(sc: StateScenario) -> StateResult:
    return StateSim(sc).run()


def main(argv: list[str]) -> int:
    """``python -m p2pagent.sim state [options]``: one run, printed as a summary or JSON."""
    p = argparse.ArgumentParser(prog="python -m p2pagent.sim state", description=__doc__)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--keys", type=int, default=200)
    p.add_argument("--writes", type=int, default=2000)
    p.add_argument("--loss", type=float, default=0.05)
    p.add_argument("--duplicate", type=float, default=0.05)
    p.add_argument("--partition", default="", help="START:END virtual seconds, e.g. 1:4")
    p.add_argument("--join-at", type=float, default=None, help="last node joins at this time")
    p.add_argument("--max-message-bytes", type=int, default=64 * 1024)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    partition = None
    if args.partition:
        a, _, b = args.partition.partition(":")
        partition = (float(a), float(b))
    result = simulate(
        StateScenario(
            nodes=args.nodes,
            keys=args.keys,
            writes=args.writes,
            loss=args.loss,
            duplicate=args.duplicate,
            partition=partition,
            join_at=args.join_at,
            max_message_bytes=args.max_message_bytes,
            seed=args.seed,
        )
    )
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(
            f"converged={result.converged} after {result.converge_s}s, "
            f"counters exact={result.counters_exact}, keys={result.keys}, "
            f"messages={result.messages}, bytes={result.bytes}, "
            f"largest message={result.largest_message}"
        )
    return 0 if result.converged and result.counters_exact else 1

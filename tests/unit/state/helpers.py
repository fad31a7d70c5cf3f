"""Test harness: replicas joined by an in-memory link with random delay, duplication,
reordering and loss. Every message crosses the wire codec, as it would between nodes."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from p2pagent.state.codec import decode_message, encode_message
from p2pagent.state.config import StateConfig
from p2pagent.state.messages import Message
from p2pagent.state.replica import Replica


def wire(msg: Message, limit: int | None = None) -> Message:
    data = encode_message(msg)
    if limit is not None:
        assert len(data) <= limit, f"message of {len(data)} bytes over the {limit} limit"
    return decode_message(data)


@dataclass
class Mesh:
    """Replicas n0..n{k-1} and a lossy, reordering, duplicating network between them."""

    size: int
    seed: int = 0
    loss: float = 0.0
    duplicate: float = 0.0
    config: StateConfig = field(default_factory=StateConfig)
    now: float = 1000.0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        names = [f"n{i}" for i in range(self.size)]
        self.replicas = {
            n: Replica(n, self.config, random.Random(self.seed * 1000 + i))
            for i, n in enumerate(names)
        }
        for r in self.replicas.values():
            r.on_membership(names)
        self.queue: list[tuple[float, int, str, str, Message]] = []
        self._n = 0
        self.max_seen = 0

    def send(self, src: str, dst: str, msg: Message, lossy: bool = True) -> None:
        copies = 1
        if lossy and self.rng.random() < self.loss:
            return
        if lossy and self.rng.random() < self.duplicate:
            copies = 2
        for _ in range(copies):
            self._n += 1
            self.queue.append((self.now + self.rng.random(), self._n, src, dst, msg))

    def step(self, lossy: bool = True) -> None:
        """Delivers the message due first (random delays make the order random)."""
        self.queue.sort(key=lambda t: (t[0], t[1]))
        when, _, src, dst, msg = self.queue.pop(0)
        self.now = max(self.now, when)
        data = encode_message(msg)
        self.max_seen = max(self.max_seen, len(data))
        assert len(data) <= self.config.max_message_bytes
        _, replies = self.replicas[dst].handle(decode_message(data), self.now)
        for reply in replies:
            self.send(dst, src, reply, lossy)

    def gossip(self) -> None:
        for name, r in self.replicas.items():
            for out in r.take_gossip(self.now):
                self.send(name, out.peer, out.message)

    def drain(self, steps: int | None = None, lossy: bool = True) -> None:
        n = 0
        while self.queue and (steps is None or n < steps):
            self.step(lossy)
            n += 1

    def anti_entropy_all(self, lossy: bool = False) -> None:
        """Every pair exchanges digests (both ways) until nothing is left in flight."""
        names = sorted(self.replicas)
        for a in names:
            for b in names:
                if a != b:
                    self.send(a, b, self.replicas[a].digest(), lossy)
        self.drain(lossy=lossy)

    def digests(self) -> set[str]:
        return {r.state_digest() for r in self.replicas.values()}

    def converge(self) -> None:
        for _ in range(3):
            self.anti_entropy_all()
            if len(self.digests()) == 1:
                return
        raise AssertionError("replicas did not converge after three anti-entropy rounds")

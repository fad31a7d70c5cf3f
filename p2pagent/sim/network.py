"""A simulated network: per-message latency, loss, duplication, reordering, partitions and
crashed nodes, on a `VirtualClock`. Randomness comes from the injected ``random.Random``.

Latency is ``latency_mean`` plus a uniform jitter in ``[-latency_jitter, +latency_jitter]``
(never below zero); independent latencies reorder messages unless ``reorder`` is False, in
which case each link delivers in send order.
"""

from __future__ import annotations

import functools
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from p2pagent.sim.clock import VirtualClock

Deliver = Callable[[str, object], None]


@dataclass(frozen=True)
class LinkModel:
    latency_mean: float = 0.002
    latency_jitter: float = 0.001
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: bool = True


@dataclass
class NodeStats:
    messages_sent: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    dropped: int = 0


@dataclass
class SimNetwork:
    clock: VirtualClock
    rng: random.Random
    model: LinkModel = field(default_factory=LinkModel)
    stats: dict[str, NodeStats] = field(default_factory=lambda: defaultdict(NodeStats))

    def __post_init__(self) -> None:
        self._nodes: dict[str, Deliver] = {}
        self._group: dict[str, int] = {}
        self._down: set[str] = set()
        self._loss: dict[str, float] = {}
        self._last_arrival: dict[tuple[str, str], float] = {}

    def register(self, name: str, deliver: Deliver) -> None:
        self._nodes[name] = deliver

    def partition(self, *groups: Iterable[str]) -> None:
        """Nodes in different groups cannot talk; nodes in no group reach everyone."""
        self._group = {n: i for i, g in enumerate(groups) for n in g}

    def heal(self) -> None:
        self._group = {}

    def crash(self, name: str) -> None:
        self._down.add(name)

    def restart(self, name: str) -> None:
        self._down.discard(name)

    def set_loss(self, name: str, loss: float) -> None:
        """Extra loss on everything ``name`` sends or receives."""
        self._loss[name] = loss

    def connected(self, src: str, dst: str) -> bool:
        if src in self._down or dst in self._down:
            return False
        gs, gd = self._group.get(src), self._group.get(dst)
        return gs is None or gd is None or gs == gd

    def send(self, src: str, dst: str, msg: object, size: int) -> None:
        st = self.stats[src]
        st.messages_sent += 1
        st.bytes_sent += size
        loss = 1 - (1 - self.model.loss) * (1 - self._loss.get(src, 0.0)) * (
            1 - self._loss.get(dst, 0.0)
        )
        copies = 2 if self.model.duplicate and self.rng.random() < self.model.duplicate else 1
        for _ in range(copies):
            if loss and self.rng.random() < loss:
                st.dropped += 1
                continue
            delay = self.model.latency_mean
            if self.model.latency_jitter:
                delay += self.rng.uniform(-self.model.latency_jitter, self.model.latency_jitter)
            arrival = self.clock.now + max(0.0, delay)
            if not self.model.reorder:
                arrival = max(arrival, self._last_arrival.get((src, dst), 0.0))
                self._last_arrival[(src, dst)] = arrival
            self.clock.call_at(arrival, functools.partial(self._arrive, src, dst, msg))

    def _arrive(self, src: str, dst: str, msg: object) -> None:
        # Connectivity is checked on arrival too: a partition cuts messages in flight.
        if not self.connected(src, dst):
            self.stats[src].dropped += 1
            return
        deliver = self._nodes.get(dst)
        if deliver is None:
            return
        self.stats[dst].messages_received += 1
        deliver(src, msg)

"""The asyncio side of ``moving``: for one model version, watches the sequences this node's
clients queued here and offers the oldest that waited too long to the peers again.

A move never leaves the sequence without a node: the peer is asked first, and only once it
sent the sequence's first message is the local one withdrawn (under the engine's lock, so
only while it still waits). If it was admitted here meanwhile, the peer's sequence is
cancelled instead and the local one goes on; the client sees exactly one of them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from p2pagent._proto import agent_pb2
from p2pagent.errors import P2PAgentError
from p2pagent.inference.generation.config import GenerationConfig
from p2pagent.inference.generation.engine import Event
from p2pagent.inference.generation.moving import MovePacer, destinations
from p2pagent.inference.generation.peers import GenerationPeers
from p2pagent.inference.generation.placement import Load, candidates, sample
from p2pagent.inference.generation.relay_stats import RelayCounts
from p2pagent.inference.generation.service import QueuedSequence
from p2pagent.membership.view import MemberView

log = logging.getLogger(__name__)


@dataclass
class Moved:
    """Where a withdrawn sequence went: the peer, its first message and the rest."""

    node: str
    first: Event
    rest: AsyncGenerator[Event, None]


@dataclass(eq=False)
class Waiting:
    """A sequence queued here for a client of this node."""

    seq: QueuedSequence
    request: agent_pb2.GenerateRequest
    since: float
    moved: Moved | None = None


class WaitingMover:
    def __init__(
        self,
        key: str,
        config: GenerationConfig,
        peers: GenerationPeers,
        members: Callable[[], list[MemberView]],
        ask: Callable[[str], Awaitable[Load | None]],
        rng: random.Random,
        clock: Callable[[], float],
        counts: RelayCounts,
    ) -> None:
        self.key = key
        self._config = config
        self._peers = peers
        self._members = members
        self._ask = ask
        self._rng = rng
        self._clock = clock
        self._counts = counts
        self._pacer = MovePacer(config.move_waiting_after_s, config.move_max_gap_s)
        self._waiting: list[Waiting] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, seq: QueuedSequence, request: agent_pb2.GenerateRequest) -> Waiting:
        entry = Waiting(seq, request, self._clock())
        self._waiting.append(entry)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"move waiting {self.key}"
            )
        return entry

    def forget(self, entry: Waiting) -> None:
        """The sequence was admitted here, ended or moved: no longer offered."""
        if entry in self._waiting:
            self._waiting.remove(entry)
            self._changed.set()

    @property
    def idle(self) -> bool:
        return not self._waiting and (self._task is None or self._task.done())

    async def _run(self) -> None:
        while self._waiting:
            # Admitted since (a peek; the withdrawal decides): not offered any more.
            for gone in [e for e in self._waiting if not e.seq.waiting()]:
                self._waiting.remove(gone)
            now = self._clock()
            entry = self._pacer.pick({e: e.since for e in self._waiting}, now)
            if entry is None:
                due = self._pacer.due(e.since for e in self._waiting)
                if due is None:
                    return
                self._changed.clear()
                try:  # woken early when one leaves: the oldest may have changed
                    await asyncio.wait_for(self._changed.wait(), max(0.01, due - now))
                except TimeoutError:
                    pass
                continue
            try:
                moved = await self._try(entry)
            except Exception:  # a bug of ours: the sequence stays here, the mover goes on
                log.exception("offering a waiting generation of %s to peers failed", self.key)
                moved = False
            if moved is None:  # admitted here meanwhile: no attempt to pace
                continue
            self._pacer.record(self._clock(), moved=moved)

    async def _try(self, entry: Waiting) -> bool | None:
        """Offers the sequence to peers with room; True when one took it, None when it was
        admitted here in the meantime."""
        asked = sample(candidates(self._members()), self._config.placement_probes, self._rng)
        answers = [a for a in await asyncio.gather(*(self._ask(p) for p in asked)) if a]
        for node in destinations(answers):
            if entry not in self._waiting:  # ended or admitted while we asked
                return None
            events = self._peers.relay(node, entry.request)
            handed_over = False
            try:
                try:
                    first = await anext(events)
                except (StopAsyncIteration, P2PAgentError) as e:
                    log.info(
                        "waiting generation of %s: %s could not take it (%s)", self.key, node, e
                    )
                    self._counts.failed_over += 1
                    continue
                if not await entry.seq.withdraw():
                    self.forget(entry)  # started here first: the peer's copy is cancelled
                    return None
                entry.moved = Moved(node, first, events)
                handed_over = True
            finally:
                if not handed_over:  # refused, failed, started here, or this task cancelled
                    await events.aclose()
            self.forget(entry)
            self._counts.moved += 1
            log.info(
                "generation of %s waited %.1f s here, moved to %s",
                self.key,
                self._clock() - entry.since,
                node,
            )
            return True
        return False

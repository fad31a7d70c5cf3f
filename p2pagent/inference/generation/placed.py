"""The node's one entry for a generation: ``PlacedGeneration.generate(model, prompt,
sampling, version)``, the shape of ``GenerationService.generate``, which runs the sequence
here or on a peer with room and returns its events either way (the gRPC ``Generate`` and
the HTTP door both call it).

The asyncio side of ``placement``: it gathers the loads the rules need, tries the nodes in
their order and passes a peer's stream on. A peer's sequence is cancelled when the caller
stops iterating (closing the relay cancels the ``GenerateRelay`` call, whose handler on the
peer cancels the sequence).

A sequence of a published version queued here is watched by the version's ``WaitingMover``
while it waits: if it waits too long, a peer that has room now takes it (``moving``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from p2pagent._proto import agent_pb2
from p2pagent.errors import BY_CODE, Internal, P2PAgentError, RemoteProtocolError, Unavailable
from p2pagent.inference.generation.engine import Event, FinishEvent
from p2pagent.inference.generation.mover import Waiting, WaitingMover
from p2pagent.inference.generation.peers import GenerationPeers
from p2pagent.inference.generation.placement import (
    HERE,
    Load,
    after_failure,
    attempt_order,
    candidates,
    runs_here_at_once,
    sample,
)
from p2pagent.inference.generation.relay_stats import RelayCounts
from p2pagent.inference.generation.sampling import SamplingParams
from p2pagent.inference.generation.service import GenerationService, Prompt, Target
from p2pagent.inference.generation.wire import request_of
from p2pagent.membership.view import MemberView

log = logging.getLogger(__name__)


class PlacedGeneration:
    def __init__(
        self,
        name: str,
        service: GenerationService,
        peers: GenerationPeers,
        members: Callable[[], list[MemberView]],
        rng: random.Random | None = None,
        counts: RelayCounts | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.service = service
        self.counts = counts or RelayCounts()
        self._peers = peers
        self._members = members
        self._rng = rng or random.Random()
        self._clock = clock
        #: One per published version with sequences of this node's clients queued here.
        self._movers: dict[str, WaitingMover] = {}

    async def generate(
        self, model: str, prompt: Prompt, params: SamplingParams, version: str = ""
    ) -> AsyncIterator[Event]:
        """The sequence's events, ending with its FinishEvent (whose ``node`` says where it
        ran). Raises before the first event for anything refused (nothing is queued then)."""
        target = self.service.resolve(model, version)
        probes = self.service.config.placement_probes
        if not target.relayable or probes == 0:
            return await self._here(target, prompt, params)
        tokens, here = await self._local_load(target, prompt, params)
        request = request_of(model, prompt, params, target.manifest_id)
        if runs_here_at_once(here):
            return await self._queued_here(target, tokens or prompt, params, request)
        asked = sample(candidates(self._members()), probes, self._rng)
        answers = [a for a in await asyncio.gather(*(self._ask(p, target) for p in asked)) if a]
        order = attempt_order(here, answers)
        if order[0] == HERE and not here.loaded:
            # Chosen before its engine could say whether this sequence fits at all: load
            # it (as running here would), then decide again with what it says.
            await self.service.load(target)
            tokens, here = await self._local_load(target, prompt, params)
            order = attempt_order(here, answers)
        for node in order:
            if node == HERE:
                return await self._queued_here(target, tokens or prompt, params, request)
            events = self._peers.relay(node, request)
            try:
                first = await anext(events)
            except StopAsyncIteration:
                failure = after_failure(node, "UNAVAILABLE", "the stream ended at once", 0)
            except P2PAgentError as e:
                code = "UNAVAILABLE" if isinstance(e, RemoteProtocolError) else e.code
                failure = after_failure(node, code, str(e), 0)
                if not failure.retry:
                    raise
            else:
                log.debug("generation of %s placed on %s", target.key, node)
                self.counts.relayed_out += 1
                return _relayed(node, first, events)
            log.info("generation of %s: %s could not take it, trying the next", target.key, node)
            self.counts.failed_over += 1
            await events.aclose()
        raise AssertionError("attempt_order always ends with this node")  # pragma: no cover

    async def _local_load(
        self, target: Target, prompt: Prompt, params: SamplingParams
    ) -> tuple[list[int] | None, Load]:
        """This node's load for the target, and the prompt's tokens when its engine is
        loaded (tokenized once, here, to size the sequence and refuse a bad one now)."""
        runner = self.service.runner_if_loaded(target)
        if runner is None:  # not loaded: it would have room, after a pull and a load
            return None, Load(HERE, loaded=False, room=True)
        folder = runner.engine.folder
        tokens = prompt.tokens(folder)
        params.validate(len(tokens), folder.context)
        return tokens, await runner.load(HERE, tokens, params)

    async def _queued_here(
        self,
        target: Target,
        prompt: Prompt | list[int],
        params: SamplingParams,
        request: agent_pb2.GenerateRequest,
    ) -> AsyncIterator[Event]:
        """Queues the sequence here, watched by its version's mover while it waits."""
        if self.service.config.move_waiting_after_s == 0:
            return await self._here(target, prompt, params)
        seq = await self.service.queue_on(target, prompt, params)
        for key in [k for k, m in self._movers.items() if m.idle and k != target.key]:
            del self._movers[key]
        mover = self._movers.get(target.key)
        if mover is None:

            async def ask(peer: str) -> Load | None:
                return await self._ask(peer, target)

            mover = WaitingMover(
                target.key,
                self.service.config,
                self._peers,
                self._members,
                ask,
                self._rng,
                self._clock,
                self.counts,
            )
            self._movers[target.key] = mover
        return self._follow(mover, mover.add(seq, request))

    async def _follow(self, mover: WaitingMover, entry: Waiting) -> AsyncGenerator[Event, None]:
        """The sequence's events from here, or from the peer it moved to while it waited."""
        local = entry.seq.events()
        started = False
        try:
            async for event in local:
                if not started:  # admitted here: no longer offered to peers
                    started = True
                    mover.forget(entry)
                    self.counts.placed_locally += 1
                yield (
                    dataclasses.replace(event, node=self.name)
                    if isinstance(event, FinishEvent)
                    else event
                )
                if isinstance(event, FinishEvent):
                    return
            if entry.moved is None:  # pragma: no cover - withdrawn only to move
                raise Internal(f"generation of {mover.key} ended here without its last message")
            self.counts.relayed_out += 1
            moved = entry.moved
            async for event in _relayed(moved.node, moved.first, moved.rest):
                yield event
        finally:
            mover.forget(entry)
            await local.aclose()  # cancels it here unless it ended or moved
            if entry.moved is not None:
                await entry.moved.rest.aclose()

    async def _ask(self, peer: str, target: Target) -> Load | None:
        try:
            return await self._peers.load(
                peer, target.model, target.manifest_id, self.service.config.probe_timeout_s
            )
        except P2PAgentError as e:
            log.debug("generation load of %s: %s left out (%s)", target.key, peer, e)
            return None

    async def _here(
        self, target: Target, prompt: Prompt | list[int], params: SamplingParams
    ) -> AsyncIterator[Event]:
        events = await self.service.generate_on(target, prompt, params)
        self.counts.placed_locally += 1
        return named(events, self.name)


async def named(events: AsyncGenerator[Event, None], node: str) -> AsyncGenerator[Event, None]:
    """This node's events, its name on the last one. Closing it closes ``events`` at once
    (which cancels the sequence), not when the garbage collector finds them."""
    try:
        async for event in events:
            yield dataclasses.replace(event, node=node) if isinstance(event, FinishEvent) else event
    finally:
        await events.aclose()


async def _relayed(
    node: str, first: Event, rest: AsyncGenerator[Event, None]
) -> AsyncGenerator[Event, None]:
    """A peer's stream passed on; its failure mid-stream is the client's error (rule 4:
    never run again elsewhere once a message went out)."""
    passed_on = 0
    try:
        event = first
        while True:
            yield event
            passed_on += 1
            if isinstance(event, FinishEvent):
                return
            try:
                event = await anext(rest)
            except StopAsyncIteration:
                raise Unavailable(
                    f"node {node} ended the generation stream without its last message"
                ) from None
    except P2PAgentError as e:
        code = "UNAVAILABLE" if isinstance(e, RemoteProtocolError) else e.code
        failure = after_failure(node, code, str(e), passed_on)
        raise BY_CODE.get(failure.code, Internal)(failure.message) from e
    finally:
        await rest.aclose()

"""The node's one entry for a generation: ``PlacedGeneration.generate(model, prompt,
sampling, version)``, the shape of ``GenerationService.generate``, which runs the sequence
here or on a peer with room and returns its events either way (the gRPC ``Generate`` and
the HTTP door both call it).

The asyncio side of ``placement``: it gathers the loads the rules need, tries the nodes in
their order and passes a peer's stream on. A peer's sequence is cancelled when the caller
stops iterating (closing the relay cancels the ``GenerateRelay`` call, whose handler on the
peer cancels the sequence).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from p2pagent.errors import BY_CODE, Internal, P2PAgentError, RemoteProtocolError, Unavailable
from p2pagent.inference.generation.engine import Event, FinishEvent
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
    ) -> None:
        self.name = name
        self.service = service
        self._peers = peers
        self._members = members
        self._rng = rng or random.Random()

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
        if runs_here_at_once(here):
            return await self._here(target, tokens or prompt, params)
        request = request_of(model, prompt, params, target.manifest_id)
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
                return await self._here(target, tokens or prompt, params)
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
                return _relayed(node, first, events)
            log.info("generation of %s: %s could not take it, trying the next", target.key, node)
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

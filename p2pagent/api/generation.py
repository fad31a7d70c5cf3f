"""Generation RPCs: ``Agent.Generate`` (a client's stream, placed on this node or a peer
with room by ``inference.generation.placed``) and the node-only ``Peer.GenerationLoad`` and
``Peer.GenerateRelay`` (a peer asking how busy this node is, then placing a sequence here).
Thin: the checks are the engine's, the errors are `p2pagent.errors`. The generation modules
(torch, transformers) are imported on the first call that needs them only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from p2pagent._proto import agent_pb2, peer_pb2
from p2pagent.errors import FailedPrecondition, Internal, InvalidArgument, P2PAgentError
from p2pagent.inference.generation.lazy import imported

if TYPE_CHECKING:
    from p2pagent.inference.generation.config import GenerationConfig
    from p2pagent.inference.generation.engine import Event
    from p2pagent.inference.generation.placed import PlacedGeneration
    from p2pagent.inference.generation.relay_stats import RelayCounts
    from p2pagent.inference.generation.service import GenerationService

Ctx = grpc.aio.ServicerContext[Any, Any]
log = logging.getLogger(__name__)

_SERVES_NONE = (
    "this node serves no decoder models: start it with generation.folders (NAME=DIR) set, "
    "or push a causal LM folder with p2pagentctl models push DIR"
)


class GenerationNode(Protocol):
    """What the generation handlers need of the node: its name and settings, its decoder
    models (local folders and the mesh's published ones) and the placing entry."""

    @property
    def name(self) -> str: ...

    @property
    def generation_config(self) -> GenerationConfig: ...

    @property
    def generation(self) -> GenerationService | None: ...

    @property
    def generation_started(self) -> GenerationService | None:
        """The service if a generation already built it (None: torch not loaded yet)."""
        ...

    @property
    def placed_generation(self) -> PlacedGeneration | None: ...

    @property
    def generation_relays(self) -> RelayCounts:
        """Where generations were placed: this node counts the peers' placements here."""
        ...


async def _import_generation() -> None:
    # torch and transformers load on a node's first generation: off the event loop.
    await imported("p2pagent.inference.generation.placed")


async def _responses(
    events: AsyncIterator[Event], model: str
) -> AsyncGenerator[agent_pb2.GenerateResponse, None]:
    from p2pagent.inference.generation.engine import FinishEvent
    from p2pagent.inference.generation.wire import response_of

    try:
        async for event in events:
            if isinstance(event, FinishEvent) and event.error:
                # The model raised: this stream fails, with its message.
                raise Internal(f"model {model!r}: {event.error}")
            yield response_of(event)
            if isinstance(event, FinishEvent):
                return
    finally:  # the caller hung up: the sequence (here or on a peer) is cancelled now
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


class GenerationAgentApi:
    _generation_node: GenerationNode

    async def Generate(
        self, request: agent_pb2.GenerateRequest, context: Ctx
    ) -> AsyncIterator[agent_pb2.GenerateResponse]:
        await _import_generation()
        placed = self._generation_node.placed_generation
        if placed is None:
            raise FailedPrecondition(_SERVES_NONE)
        if not request.model:
            raise InvalidArgument("GenerateRequest.model is empty: name the model to run")
        from p2pagent.inference.generation.wire import prompt_of, sampling_of

        events = await placed.generate(
            request.model, prompt_of(request), sampling_of(request), request.model_version
        )
        async with contextlib.aclosing(_responses(events, request.model)) as responses:
            async for response in responses:
                yield response


class GenerationPeerApi:
    _generation_node: GenerationNode

    async def GenerationLoad(
        self, request: peer_pb2.GenerationLoadRequest, context: Ctx
    ) -> peer_pb2.GenerationLoadResponse:
        node = self._generation_node
        config = node.generation_config
        if not config.accept_relayed:
            return peer_pb2.GenerationLoadResponse(serves=False)
        service = node.generation_started
        runner = None
        if service is not None:  # else nothing is loaded: no need to load torch to say so
            from p2pagent.inference.generation.sampling import SamplingParams

            if request.model in service.names():  # a local folder, not that version
                return peer_pb2.GenerationLoadResponse(serves=False)
            target = service.resolve(request.model, request.model_version)
            runner = service.runner_if_loaded(target)
            if runner is not None:
                load = await runner.load(node.name, None, SamplingParams())
                return peer_pb2.GenerationLoadResponse(
                    serves=True,
                    loaded=True,
                    running=load.running,
                    waiting=load.waiting,
                    max_running=load.max_running,
                    reserved_fraction=load.reserved_fraction,
                )
        return peer_pb2.GenerationLoadResponse(serves=True, max_running=config.max_running)

    async def GenerateRelay(
        self, request: peer_pb2.GenerateRelayRequest, context: Ctx
    ) -> AsyncIterator[peer_pb2.GenerateRelayResponse]:
        node = self._generation_node
        try:
            target, events = await self._take_relayed(request)
        except P2PAgentError:
            node.generation_relays.refused += 1
            raise
        node.generation_relays.relayed_in += 1
        from p2pagent.inference.generation.placed import named

        inner = request.request
        sent = 0
        try:
            # aclosing: however gRPC ends this handler (cancelling it while it awaits a
            # token, or closing it at a yield), the sequence is cancelled now.
            async with contextlib.aclosing(
                _responses(named(events, node.name), inner.model)
            ) as responses:
                async for response in responses:
                    yield peer_pb2.GenerateRelayResponse(response=response)
                    sent += 1
        except (asyncio.CancelledError, GeneratorExit):
            log.info(
                "generation of %s placed here by %s cancelled by its origin after %d messages",
                target,
                request.origin or "a peer",
                sent,
            )
            raise

    async def _take_relayed(
        self, request: peer_pb2.GenerateRelayRequest
    ) -> tuple[str, AsyncGenerator[Event, None]]:
        """Starts a sequence a peer placed here: its engine key and events; raises when this
        node does not take it (relays off, not that version, no room to start at once)."""
        node = self._generation_node
        if not node.generation_config.accept_relayed:
            raise FailedPrecondition(
                f"{node.name} takes no generations from peers (generation.accept_relayed)"
            )
        await _import_generation()
        service = node.generation
        if service is None:
            raise FailedPrecondition(_SERVES_NONE)
        from p2pagent.inference.generation.wire import prompt_of, sampling_of

        inner = request.request
        if inner.model in service.names() or not inner.model_version:
            # A local folder here may hold other weights than the version the origin pinned.
            raise FailedPrecondition(
                f"{inner.model!r} is a local folder on {node.name}, not the published version"
            )
        target = service.resolve(inner.model, inner.model_version)
        log.info("generation of %s placed here by %s", target.key, request.origin or "a peer")
        events = await service.generate_on(
            target, prompt_of(inner), sampling_of(inner), require_room=True
        )
        return target.key, events

"""The ``Generate`` handler: request to prompt and sampling parameters, engine events to
streamed messages. Thin: the checks are the engine's, the errors are `p2pagent.errors`.
The generation modules (torch, transformers) are imported on the first call only."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from p2pagent._proto import agent_pb2
from p2pagent.errors import FailedPrecondition, Internal, InvalidArgument

if TYPE_CHECKING:
    from p2pagent.inference.generation.sampling import SamplingParams
    from p2pagent.inference.generation.service import GenerationService, Prompt

Ctx = grpc.aio.ServicerContext[Any, Any]

#: max_new_tokens when a request leaves it 0.
DEFAULT_MAX_NEW_TOKENS = 64


def sampling_of(request: agent_pb2.GenerateRequest) -> SamplingParams:
    from p2pagent.inference.generation.sampling import SamplingParams

    return SamplingParams(
        max_new_tokens=request.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        temperature=request.temperature,
        top_p=request.top_p if request.HasField("top_p") else 1.0,
        top_k=request.top_k,
        seed=request.seed if request.HasField("seed") else None,
        stop=tuple(request.stop),
    )


def prompt_of(request: agent_pb2.GenerateRequest) -> Prompt:
    from p2pagent.inference.generation.folder import ChatMessage
    from p2pagent.inference.generation.service import Prompt

    return Prompt(
        text=request.prompt,
        ids=tuple(request.prompt_ids),
        messages=tuple(ChatMessage(m.role, m.content) for m in request.messages),
    )


class GenerationNode(Protocol):
    """What the generation handler needs of the node: its decoder models (local folders and
    the mesh's published ones), if it serves any."""

    @property
    def generation(self) -> GenerationService | None: ...


class GenerationAgentApi:
    _generation_node: GenerationNode

    async def Generate(
        self, request: agent_pb2.GenerateRequest, context: Ctx
    ) -> AsyncIterator[agent_pb2.GenerateResponse]:
        # torch and transformers load on a node's first Generate: off the event loop.
        await asyncio.to_thread(importlib.import_module, "p2pagent.inference.generation.service")
        service = self._generation_node.generation
        if service is None:
            raise FailedPrecondition(
                "this node serves no decoder models: start it with generation.folders "
                "(NAME=DIR) set, or push a causal LM folder with p2pagentctl models push DIR"
            )
        if not request.model:
            raise InvalidArgument("GenerateRequest.model is empty: name the model to run")
        from p2pagent.inference.generation.engine import FinishEvent

        events = await service.generate(
            request.model, prompt_of(request), sampling_of(request), request.model_version
        )
        async for event in events:
            if isinstance(event, FinishEvent):
                if event.error:  # the model raised: this stream fails, with its message
                    raise Internal(f"model {request.model!r}: {event.error}")
                yield agent_pb2.GenerateResponse(
                    text=event.text,
                    finish_reason=event.reason.value,
                    prompt_tokens=event.prompt_tokens,
                    generated_tokens=event.generated_tokens,
                )
                return
            yield agent_pb2.GenerateResponse(text=event.text, token_ids=[event.token_id])

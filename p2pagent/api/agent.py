"""The public ``Agent`` service: thin handlers that delegate to the node's capabilities.

Handlers raise `p2pagent.errors`; the guard interceptor maps them to gRPC status codes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from operator import attrgetter
from typing import Any, Protocol

import grpc

from p2pagent._proto import agent_pb2, agent_pb2_grpc
from p2pagent.api.generation import GenerationAgentApi, GenerationNode
from p2pagent.api.membership import MembershipAgentApi, MembershipNode
from p2pagent.api.models import ModelsAgentApi, ModelsNode
from p2pagent.api.state import StateAgentApi, StateNode
from p2pagent.api.tasks import TasksAgentApi, TasksNode, admit
from p2pagent.api.text import TextAgentApi, TextNode
from p2pagent.api.training import TrainingAgentApi, TrainingNode
from p2pagent.errors import InvalidArgument
from p2pagent.tasks.results import TaskResult
from p2pagent.tasks.wire import error_from_code
from p2pagent.transport.guard import caller_identity
from p2pagent.transport.multiplexed import Send, StreamProtocol, serve
from p2pagent.transport.request_window import RequestWindow


class AgentNode(
    MembershipNode,
    StateNode,
    ModelsNode,
    TextNode,
    TasksNode,
    TrainingNode,
    GenerationNode,
    Protocol,
):
    """What the Agent service needs of the node: each capability's part, and its status."""

    def status(self) -> agent_pb2.StatusResponse: ...


Ctx = grpc.aio.ServicerContext[Any, Any]


class AgentService(
    MembershipAgentApi,
    StateAgentApi,
    ModelsAgentApi,
    TasksAgentApi,
    TrainingAgentApi,
    GenerationAgentApi,
    TextAgentApi,
    agent_pb2_grpc.AgentServiceServicer,
):
    """Each capability's handlers live in ``api/<capability>.py``; this class joins them."""

    def __init__(self, node: AgentNode) -> None:
        self._node = node
        self._membership_node = self._state_node = self._models_node = self._tasks_node = node
        self._training_node = self._generation_node = self._text_node = node

    async def Status(
        self, request: agent_pb2.StatusRequest, context: Ctx
    ) -> agent_pb2.StatusResponse:
        return self._node.status()

    async def Infer(self, request: agent_pb2.InferRequest, context: Ctx) -> agent_pb2.InferResponse:
        owner = caller_identity(context).uri
        node = self._node
        inputs, served = self._admit(request)
        deadline_s = context.time_remaining()
        if not served:
            # Pulls it first if need be; a bad or unknown pinned version fails here, at once.
            await node.models.ensure_loadable(request.model, request.model_version)
        # Through the scheduler, like a submitted task: queued with them, stolen by an idle
        # peer when this node is the busy one.
        result = await node.tasks.run_inline(request, inputs, deadline_s, owner, served)
        if not result.ok:
            raise error_from_code(result.error_code, result.error_message)
        return agent_pb2.InferResponse(
            outputs=result.outputs, executor=result.executor, compute_s=result.compute_s
        )

    async def InferStream(
        self, request_iterator: AsyncIterator[agent_pb2.InferStreamRequest], context: Ctx
    ) -> AsyncIterator[agent_pb2.InferStreamResponse]:
        owner = caller_identity(context).uri
        node = self._node

        def run(request: agent_pb2.InferStreamRequest, send: Send) -> Awaitable[TaskResult]:
            # No coroutine per request where the model is served here: admitted and started
            # now, and the engine request's own task is the future the stream waits on.
            inputs, served = self._admit(request)
            deadline_s = request.timeout_s or None
            if served:
                return node.tasks.start_inline(request, inputs, deadline_s, owner, True)
            return self._infer_pulled(request, inputs, deadline_s, owner)

        protocol = StreamProtocol(
            run=run,
            # attrgetter: read in C, not a Python call, on every message.
            request_id=attrgetter("request_id"),
            cancel=attrgetter("cancel"),
            timeout_s=_timeout_s,
            error_answer=lambda i, code, message: agent_pb2.InferStreamResponse(
                request_id=i, error_code=code, error_message=message
            ),
            answer=_stream_answer,
        )
        limit = node.config.transport.stream_max_in_flight
        window = RequestWindow(limit, "transport.stream_max_in_flight")
        async for answer in serve(request_iterator, protocol, window):
            yield answer

    def _admit(
        self, request: agent_pb2.InferRequest | agent_pb2.InferStreamRequest
    ) -> tuple[Any, bool]:
        """An Infer's inputs, decoded and checked (``admit``), and whether its model is
        served here at its newest version (nothing to pull or resolve before it runs)."""
        node = self._node
        if not request.model:
            raise InvalidArgument("InferRequest.model is empty: name the model to run")
        inputs = admit(node, request)
        return inputs, not request.model_version and node.models_cache.serves(request.model)

    async def _infer_pulled(
        self,
        request: agent_pb2.InferStreamRequest,
        inputs: Any,
        deadline_s: float | None,
        owner: str,
    ) -> TaskResult:
        """A streamed Infer of a model not served here at its newest version: made loadable
        (pulled if need be; a bad or unknown pinned version fails here), then run."""
        node = self._node
        await node.models.ensure_loadable(request.model, request.model_version)
        return await node.tasks.run_inline(request, inputs, deadline_s, owner)


def _stream_answer(request_id: int, result: TaskResult) -> agent_pb2.InferStreamResponse:
    """A streamed Infer's answer from its task's result (a failed one raises its error)."""
    if not result.ok:
        raise error_from_code(result.error_code, result.error_message)
    return agent_pb2.InferStreamResponse(
        request_id=request_id,
        outputs=result.outputs,
        executor=result.executor,
        compute_s=result.compute_s,
    )


def _timeout_s(request: agent_pb2.InferStreamRequest) -> float | None:
    timeout = request.timeout_s
    if timeout < 0 or timeout != timeout:  # NaN
        raise InvalidArgument(
            f"request {request.request_id}: timeout_s must be >= 0 seconds (0 = none), "
            f"got {timeout}"
        )
    return timeout or None

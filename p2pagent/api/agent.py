"""The public ``Agent`` service: thin handlers that delegate to the node's capabilities.

Handlers raise `p2pagent.errors`; the guard interceptor maps them to gRPC status codes.
"""

from __future__ import annotations

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
from p2pagent.tasks.wire import error_from_code
from p2pagent.transport.guard import caller_identity


class AgentNode(
    MembershipNode, StateNode, ModelsNode, TextNode, TasksNode, TrainingNode, GenerationNode,
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
    agent_pb2_grpc.AgentServicer,
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
        node = self._node
        if not request.model:
            raise InvalidArgument("InferRequest.model is empty: name the model to run")
        inputs = admit(node, request)
        remaining = context.time_remaining()
        # Pulls it first if need be; a bad or unknown pinned version fails here, at once.
        await node.models.ensure_loadable(request.model, request.model_version)
        # Through the scheduler, like a submitted task: queued with them, stolen by an idle
        # peer when this node is the busy one.
        owner = caller_identity(context).uri
        result = await node.tasks.run_inline(request, inputs, remaining, owner)
        if not result.ok:
            raise error_from_code(result.error_code, result.error_message)
        return agent_pb2.InferResponse(
            outputs=result.outputs, executor=result.executor, compute_s=result.compute_s
        )

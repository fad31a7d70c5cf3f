"""The public ``Agent`` service: thin handlers that delegate to the node's capabilities.

Handlers raise `p2pagent.errors`; the guard interceptor maps them to gRPC status codes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from p2pagent._proto import agent_pb2, agent_pb2_grpc, common_pb2

if TYPE_CHECKING:
    from p2pagent.node import Node

Ctx = grpc.aio.ServicerContext[Any, Any]


class AgentService(agent_pb2_grpc.AgentServicer):
    def __init__(self, node: Node) -> None:
        self._node = node

    async def Status(
        self, request: agent_pb2.StatusRequest, context: Ctx
    ) -> agent_pb2.StatusResponse:
        return self._node.status()

    async def Members(
        self, request: agent_pb2.MembersRequest, context: Ctx
    ) -> agent_pb2.MembersResponse:
        node = self._node
        me = common_pb2.Member(name=node.name, address=node.address, state="alive")
        return agent_pb2.MembersResponse(members=[me])

"""Membership RPCs: the ``Agent`` handlers (public) and the ``Peer`` handlers (node-to-node) of
the membership capability. Thin: decode, call the driver, encode; errors are `p2pagent.errors`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from p2pagent._proto import agent_pb2, common_pb2
from p2pagent.errors import FailedPrecondition

if TYPE_CHECKING:
    from p2pagent.node import Node

Ctx = grpc.aio.ServicerContext[Any, Any]


class MembershipAgentApi:
    _node: Node

    async def Members(
        self, request: agent_pb2.MembersRequest, context: Ctx
    ) -> agent_pb2.MembersResponse:
        members = [
            common_pb2.Member(
                name=m.name,
                address=m.address or (self._node.address if m.name == self._node.name else ""),
                state=m.state,
                incarnation=m.incarnation,
                tags=dict(m.tags),
            )
            for m in self._node.members.members()
        ]
        return agent_pb2.MembersResponse(members=members)


class MembershipPeerApi:
    _node: Node

    async def Gossip(self, request: common_pb2.Envelope, context: Ctx) -> common_pb2.Envelope:
        return self._membership_call(request, context, "Gossip")

    async def PushPull(self, request: common_pb2.Envelope, context: Ctx) -> common_pb2.Envelope:
        return self._membership_call(request, context, "PushPull")

    def _membership_call(
        self, request: common_pb2.Envelope, context: Ctx, method: str
    ) -> common_pb2.Envelope:
        driver = self._node.membership
        if driver is None:
            raise FailedPrecondition("membership is not running on this node")
        payload = driver.receive(request, context, method)
        return common_pb2.Envelope(version=request.version, payload=payload)

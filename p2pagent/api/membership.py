"""Membership RPCs: the ``Agent`` handlers (public) and the ``Peer`` handlers (node-to-node) of
the membership capability. Thin: decode, call the driver, encode; errors are `p2pagent.errors`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import grpc

from p2pagent._proto import agent_pb2, common_pb2

if TYPE_CHECKING:
    from p2pagent.membership.driver import MembershipDriver
    from p2pagent.membership.view import PeerDirectory


class MembershipNode(Protocol):
    """What the membership handlers need of the node."""

    @property
    def name(self) -> str: ...

    @property
    def address(self) -> str: ...

    @property
    def members(self) -> PeerDirectory: ...

    @property
    def membership(self) -> MembershipDriver: ...


Ctx = grpc.aio.ServicerContext[Any, Any]


class MembershipAgentApi:
    _membership_node: MembershipNode

    async def Members(
        self, request: agent_pb2.MembersRequest, context: Ctx
    ) -> agent_pb2.MembersResponse:
        node = self._membership_node
        members = [
            common_pb2.Member(
                name=m.name,
                address=m.address or (node.address if m.name == node.name else ""),
                state=m.state,
                incarnation=m.incarnation,
                tags=dict(m.tags),
            )
            for m in node.members.members()
        ]
        return agent_pb2.MembersResponse(members=members)


class MembershipPeerApi:
    _membership_node: MembershipNode

    async def Gossip(self, request: common_pb2.Envelope, context: Ctx) -> common_pb2.Envelope:
        return self._membership_call(request, context, "Gossip")

    async def PushPull(self, request: common_pb2.Envelope, context: Ctx) -> common_pb2.Envelope:
        return self._membership_call(request, context, "PushPull")

    def _membership_call(
        self, request: common_pb2.Envelope, context: Ctx, method: str
    ) -> common_pb2.Envelope:
        payload = self._membership_node.membership.receive(request, context, method)
        return common_pb2.Envelope(version=request.version, payload=payload)

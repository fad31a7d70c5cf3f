"""The node-to-node ``Peer`` service: thin handlers that hand payloads to each capability's
driver. Only node identities get here (see transport.guard)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from p2pagent._proto import peer_pb2_grpc
from p2pagent.api.membership import MembershipPeerApi
from p2pagent.api.models import ModelsPeerApi
from p2pagent.api.state import StatePeerApi
from p2pagent.api.tasks import TasksPeerApi

if TYPE_CHECKING:
    from p2pagent.node import Node

Ctx = grpc.aio.ServicerContext[Any, Any]


class PeerService(
    MembershipPeerApi, StatePeerApi, ModelsPeerApi, TasksPeerApi, peer_pb2_grpc.PeerServicer
):
    """Each capability's handlers live in ``api/<capability>.py``; this class joins them."""

    def __init__(self, node: Node) -> None:
        self._node = node

"""The node-to-node ``Peer`` service: thin handlers that hand payloads to each capability's
driver. Only node identities get here (see transport.guard)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from p2pagent._proto import peer_pb2_grpc

if TYPE_CHECKING:
    from p2pagent.node import Node

Ctx = grpc.aio.ServicerContext[Any, Any]


class PeerService(peer_pb2_grpc.PeerServicer):
    def __init__(self, node: Node) -> None:
        self._node = node

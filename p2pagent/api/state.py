"""State RPCs: the ``Agent`` handlers (public) and the ``Peer`` handlers (node-to-node) of
the state capability. Thin: decode, call the driver, encode; errors are `p2pagent.errors`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from p2pagent.node import Node

Ctx = grpc.aio.ServicerContext[Any, Any]


class StateAgentApi:
    _node: Node


class StatePeerApi:
    _node: Node

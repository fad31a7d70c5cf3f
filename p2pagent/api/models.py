"""Models RPCs: the ``Agent`` handlers (public) and the ``Peer`` handlers (node-to-node) of
the models capability. Thin: decode, call the driver, encode; errors are `p2pagent.errors`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from p2pagent.node import Node

Ctx = grpc.aio.ServicerContext[Any, Any]


class ModelsAgentApi:
    _node: Node


class ModelsPeerApi:
    _node: Node

"""The four node-to-node calls of the scheduler, behind one small interface.

``PeerTransport`` is what the asyncio adapter (``tasks/adapter.py``) needs from the network:
``Peer.Assign``, ``Peer.Steal``, ``Peer.Complete`` and ``Peer.Load``, in the cores' types.
:class:`GrpcPeerTransport` speaks them over the node's mutual-TLS channels; tests use the
in-memory one in ``p2pagent/testing/peer_link.py``. ``within_s`` is each call's deadline.
Every failure comes out as one error of ``p2pagent.errors`` (a gRPC status through
``transport/errors.py``'s table, an unreachable member as ``Unavailable``, a malformed answer
as ``RemoteProtocolError``): the adapter handles them in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import grpc

from p2pagent._proto import peer_pb2, peer_pb2_grpc
from p2pagent.errors import P2PAgentError, Unavailable
from p2pagent.membership.view import PeerDirectory
from p2pagent.tasks.load import LoadReport
from p2pagent.tasks.results import TaskResult
from p2pagent.tasks.spec import Task
from p2pagent.tasks.wire import (
    decode_report,
    encode_report,
    result_to_proto,
    task_to_spec,
    tasks_or_errors,
)
from p2pagent.transport.errors import error_from_rpc

if TYPE_CHECKING:
    from p2pagent.transport.channels import ChannelPool


class PeerTransport(Protocol):
    """Calls to other nodes' schedulers; each raises a ``P2PAgentError`` when it fails."""

    async def assign(self, node: str, task: Task, within_s: float) -> bool:
        """Whether ``node`` accepted ``task`` into its queue."""
        ...

    async def steal(
        self,
        victim: str,
        thief: str,
        max_tasks: int,
        models: Sequence[str],
        thief_speed: float,
        within_s: float,
    ) -> list[Task | P2PAgentError]:
        """The tasks handed over (each one that does not decode, as its error)."""
        ...

    async def complete(self, origin: str, result: TaskResult, within_s: float) -> bool:
        """Whether ``origin`` accepted the result (False: a duplicate or stale one)."""
        ...

    async def load(self, peer: str, report: LoadReport, within_s: float) -> LoadReport:
        """Sends our report; returns the peer's."""
        ...


class GrpcPeerTransport:
    """``PeerTransport`` over the ``Peer`` gRPC service."""

    def __init__(self, members: PeerDirectory, channels: ChannelPool) -> None:
        self._members = members
        self._channels = channels

    def _stub(self, node: str) -> peer_pb2_grpc.PeerServiceAsyncStub:
        member = self._members.member(node)
        if member is None or not member.address or not member.reachable:
            raise Unavailable(f"{node} is not a reachable member")
        return peer_pb2_grpc.PeerServiceStub(self._channels.get(member.address))

    async def assign(self, node: str, task: Task, within_s: float) -> bool:
        request = peer_pb2.AssignRequest(task=task_to_spec(task))
        try:
            resp = await self._stub(node).Assign(request, timeout=within_s)
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from e
        return bool(resp.accepted)

    async def steal(
        self,
        victim: str,
        thief: str,
        max_tasks: int,
        models: Sequence[str],
        thief_speed: float,
        within_s: float,
    ) -> list[Task | P2PAgentError]:
        request = peer_pb2.StealRequest(
            thief=thief, max_tasks=max_tasks, models=list(models), thief_speed=thief_speed
        )
        try:
            resp = await self._stub(victim).Steal(request, timeout=within_s)
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from e
        return tasks_or_errors(resp.tasks)

    async def complete(self, origin: str, result: TaskResult, within_s: float) -> bool:
        try:
            resp = await self._stub(origin).Complete(result_to_proto(result), timeout=within_s)
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from e
        return bool(resp.accepted)

    async def load(self, peer: str, report: LoadReport, within_s: float) -> LoadReport:
        try:
            reply = await self._stub(peer).Load(encode_report(report), timeout=within_s)
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from e
        return decode_report(reply)

"""The two node-only calls a node makes to place a generation on a peer: ``Peer.GenerationLoad``
(how busy is your engine for this version?) and ``Peer.GenerateRelay`` (run it and stream it
back). Thin: a failed call surfaces as ``p2pagent.errors``, a message as an engine event."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

import grpc

from p2pagent._proto import agent_pb2, peer_pb2, peer_pb2_grpc
from p2pagent.errors import FailedPrecondition, Unavailable
from p2pagent.inference.generation.engine import Event
from p2pagent.inference.generation.placement import Load
from p2pagent.inference.generation.wire import event_of
from p2pagent.membership.view import PeerDirectory
from p2pagent.transport.channels import ChannelPool
from p2pagent.transport.errors import error_from_rpc


class GenerationPeers(Protocol):
    """What placing a generation needs of the network (a fake in the tests)."""

    async def load(self, peer: str, model: str, manifest_id: str, within_s: float) -> Load:
        """The peer's load for that version; raises when it does not answer or serve."""
        ...

    def relay(self, peer: str, request: agent_pb2.GenerateRequest) -> AsyncGenerator[Event, None]:
        """The peer's events for ``request``; a refusal or failure raises, before the first
        event or after. Closing the iterator cancels the call (and the peer's sequence)."""
        ...


class GrpcGenerationPeers:
    """``GenerationPeers`` over the ``Peer`` gRPC service."""

    def __init__(self, origin: str, members: PeerDirectory, channels: ChannelPool) -> None:
        self._origin = origin
        self._members = members
        self._channels = channels

    def _stub(self, peer: str) -> peer_pb2_grpc.PeerServiceAsyncStub:
        member = self._members.member(peer)
        if member is None or not member.address or not member.reachable:
            raise Unavailable(f"{peer} is not a reachable member")
        return peer_pb2_grpc.PeerServiceStub(self._channels.get(member.address))

    async def load(self, peer: str, model: str, manifest_id: str, within_s: float) -> Load:
        request = peer_pb2.GenerationLoadRequest(model=model, model_version=manifest_id)
        try:
            r = await self._stub(peer).GenerationLoad(request, timeout=within_s)
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from e
        if not r.serves:
            raise FailedPrecondition(f"{peer} takes no generations from peers")
        return Load(
            node=peer,
            loaded=r.loaded,
            room=r.waiting == 0 and r.running < r.max_running and r.reserved_fraction < 1,
            running=r.running,
            waiting=r.waiting,
            max_running=max(1, r.max_running),
            reserved_fraction=r.reserved_fraction,
        )

    async def relay(
        self, peer: str, request: agent_pb2.GenerateRequest
    ) -> AsyncGenerator[Event, None]:
        call = self._stub(peer).GenerateRelay(
            peer_pb2.GenerateRelayRequest(request=request, origin=self._origin)
        )
        try:
            while True:
                try:
                    message = await call.read()
                except grpc.aio.AioRpcError as e:
                    raise error_from_rpc(e) from e
                if message is grpc.aio.EOF:
                    return
                assert isinstance(message, peer_pb2.GenerateRelayResponse)
                yield event_of(message.response)
        finally:
            call.cancel()  # the client went away, or the stream ended: nothing left to run

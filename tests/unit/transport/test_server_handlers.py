"""The server registers no methods with grpc: every service is found through its generic
handler (transport/server.py), since grpc.aio's server waits on one pending request per
registered method for every call that arrives."""

from __future__ import annotations

from typing import Any

from p2pagent._proto import agent_pb2_grpc, peer_pb2_grpc
from p2pagent.transport.guard import Guard, GuardedHandlers
from p2pagent.transport.server import Server


class _Recorder:
    """Stands in for grpc's core server object: records how services are added."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.calls.append("generic")

    def add_registered_method_handlers(self, handlers: Any) -> None:
        self.calls.append("registered")


async def test_services_are_added_as_generic_handlers_only() -> None:
    server = Server(Guard("test"), 1 << 20)
    core, real = _Recorder(), server.grpc._server  # type: ignore[attr-defined]
    server.grpc._server = core  # type: ignore[attr-defined]
    try:
        agent_pb2_grpc.add_AgentServiceServicer_to_server(
            agent_pb2_grpc.AgentServiceServicer(), server.grpc
        )
        peer_pb2_grpc.add_PeerServiceServicer_to_server(
            peer_pb2_grpc.PeerServiceServicer(), server.grpc
        )
    finally:
        server.grpc._server = real  # type: ignore[attr-defined]
    assert core.calls == ["generic", "generic"]


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def test_every_generic_handler_is_behind_the_guard() -> None:
    """No interceptor: each generic handler added (ours, health's) is wrapped, and what it
    answers for a method is the guard's wrapper of the servicer's handler, made once."""
    added: list[Any] = []

    class _Keeper(_Recorder):
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            added.extend(handlers)

    guard = Guard("test")
    server = Server(guard, 1 << 20)
    core, real = _Keeper(), server.grpc._server  # type: ignore[attr-defined]
    server.grpc._server = core  # type: ignore[attr-defined]
    try:
        agent_pb2_grpc.add_AgentServiceServicer_to_server(
            agent_pb2_grpc.AgentServiceServicer(), server.grpc
        )
    finally:
        server.grpc._server = real  # type: ignore[attr-defined]
    assert [type(h) for h in added] == [GuardedHandlers]
    method = "/p2pagent.v1.AgentService/Status"
    first = added[0].service(_Details(method))
    assert first is not None and first is added[0].service(_Details(method))
    inner = added[0]._inner.service(_Details(method))
    assert first is not inner and first is guard.guarded(method, inner)
    assert added[0].service(_Details("/p2pagent.v1.AgentService/NoSuchMethod")) is None

"""The node's gRPC server: mutual TLS, the guard, health and reflection (v1 and v1alpha, see
transport/reflection.py).

Every service is served through its generic handler only. The generated
``add_*Servicer_to_server`` functions also register each method with grpc ("registered
methods"), and grpc.aio's server then keeps one pending call request per registered method and
waits on all of them with ``asyncio.wait`` for every call that arrives: with the ~45 methods of
our services that wait (a done-callback added to and removed from each pending request) cost
more per call than the guard (issue 26). With none registered there is one pending request,
and the generic handlers answer the same methods with the same handlers. The guard wraps
each generic handler (``guard.GuardedHandlers``) rather than running as an interceptor, which
grpc.aio drives as a chain of coroutines on every call.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from p2pagent.config import parse_address
from p2pagent.errors import ConfigError
from p2pagent.identity.material import TLSMaterial
from p2pagent.transport.config import TransportConfig
from p2pagent.transport.credentials import server_credentials
from p2pagent.transport.guard import Guard, GuardedHandlers
from p2pagent.transport.reflection import enable as enable_reflection

KEEPALIVE_SERVER_OPTIONS: list[tuple[str, int]] = [
    # Accept the client keepalive of transport.channels (20 s, while calls are open). Ours is
    # sent only while calls are open too: pinging every idle connection costs each node O(N)
    # packets (every peer it probed keeps one), the largest idle cost left (issue 28).
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


def _check_bindable(listen: str) -> None:
    """Tries the address with a plain socket first, for a clear error instead of gRPC's log."""
    host, port = parse_address(listen, "listen address")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"cannot listen on {listen}: {e.strerror}") from None
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(infos[0][4])
        except OSError as e:
            raise ConfigError(f"cannot listen on {listen}: {e.strerror}") from None


def _generic_only(service_name: str, method_handlers: dict[str, Any]) -> None:
    """Stands in for ``grpc.aio.Server.add_registered_method_handlers``: registers nothing,
    since the generic handler added with the same methods already serves them."""


class Server:
    """Owns the grpc.aio server and its health servicer."""

    def __init__(
        self, guard: Guard, max_message_bytes: int, limits: TransportConfig | None = None
    ) -> None:
        options: list[tuple[str, int]] = [
            *KEEPALIVE_SERVER_OPTIONS,
            *(limits or TransportConfig()).server_options(),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self.grpc = grpc.aio.server(options=options)
        # Generic handlers only (see the module's docstring), each behind the guard: every
        # add_*_to_server call made with this server, ours and grpc's own (health,
        # reflection), goes through here.
        self.grpc.add_registered_method_handlers = _generic_only  # type: ignore[method-assign,assignment]
        add = self.grpc.add_generic_rpc_handlers

        def add_guarded(handlers: Iterable[grpc.GenericRpcHandler]) -> None:
            add(tuple(GuardedHandlers(h, guard) for h in handlers))

        self.grpc.add_generic_rpc_handlers = add_guarded  # type: ignore[method-assign,assignment]
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        self._services: list[str] = [health.SERVICE_NAME]
        self.port = 0

    def add_service(self, full_name: str) -> None:
        """Records a service name for reflection and health (call after adding its servicer)."""
        self._services.append(full_name)

    def bind(self, listen: str, material: Callable[[], TLSMaterial]) -> int:
        _check_bindable(listen)
        try:
            port = self.grpc.add_secure_port(listen, server_credentials(material))
        except RuntimeError as e:
            raise ConfigError(f"cannot listen on {listen}: address in use or not available") from e
        if port == 0:
            raise ConfigError(f"cannot listen on {listen}: address in use or not available")
        self.port = port
        return port

    async def start(self) -> None:
        """Starts accepting calls, with health NOT_SERVING: the owner calls
        ``set_serving(True)`` once everything behind the services is ready (readiness probes
        and load balancers must not send work to a node still loading its state)."""
        enable_reflection(self.grpc, self._services)
        await self.set_serving(False)
        await self.grpc.start()

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._services]:
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        await self.set_serving(False)
        await self.grpc.stop(grace)

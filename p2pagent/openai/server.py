"""The door as a node component: uvicorn serving the app as a task on the daemon's own
event loop (handlers call node objects directly; no thread, no second loop).

uvicorn's ``Server.serve`` would take over SIGINT and SIGTERM, which belong to the daemon,
so ``_EmbeddedServer`` leaves the signals alone; the node stops the door (``stop``) before
its gRPC server, letting open streams finish for the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Generator
from typing import Any

import uvicorn

from p2pagent.config import parse_address
from p2pagent.errors import ConfigError
from p2pagent.identity.material import TLSPaths
from p2pagent.openai import tls
from p2pagent.openai.app import DoorNode, build_app

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the daemon owns its signals


class OpenAIDoor:
    """HTTPS (mutual TLS) on ``openai.listen``, serving ``openai.app``'s routes."""

    def __init__(self, node: DoorNode, paths: Callable[[], TLSPaths], grace_s: float) -> None:
        self._node = node
        self._paths = paths
        self._grace_s = grace_s
        self._ctx: ssl.SSLContext | None = None
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> None:
        listen = self._node.config.openai.listen
        host, port = parse_address(listen, "openai.listen address")
        self._ctx = tls.server_context(self._paths())
        ctx = self._ctx

        def context(_config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]) -> Any:
            return ctx

        config = uvicorn.Config(
            build_app(self._node),
            host=host,
            port=port,
            http=tls.PeerCertProtocol,
            ssl_context_factory=context,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=max(1, round(self._grace_s)),
            # No limit_concurrency: beyond it uvicorn answers a plain-text 503; the app's
            # own gate (gate.py) enforces openai.max_connections in OpenAI's error shape.
        )
        # Bound here, not by uvicorn: it answers a bind failure with sys.exit.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server((host, port), family=family, reuse_port=False)
        except OSError as e:
            raise ConfigError(
                f"cannot serve the OpenAI door on {listen} (openai.listen): {e.strerror}"
            ) from None
        # uvicorn's own lines ("Started server process") say nothing our log does not.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        server = _EmbeddedServer(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="openai-door")
        while not server.started:
            if self._task.done():
                error = self._task.exception() if not self._task.cancelled() else None
                raise ConfigError(
                    f"cannot serve the OpenAI door on {listen} (openai.listen): "
                    f"{error or 'the server stopped at start'}"
                )
            await asyncio.sleep(0.01)
        self.port = sock.getsockname()[1]
        log.info("OpenAI-compatible door on https://%s:%d/v1 (mutual TLS)", host, self.port)

    def reload_certificates(self) -> None:
        """New handshakes use the certificate files as they are now (SIGHUP, renewals)."""
        if self._ctx is not None:
            tls.reload(self._ctx, self._paths())

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self._grace_s + 5)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        except Exception:
            log.exception("the OpenAI door failed while stopping")
        self._server = self._task = None

"""Serves a registry at ``/metrics`` over plain HTTP (the usual Prometheus scrape; no secrets
in it); every other path answers 404.

The HTTP server runs in a thread, but the node's objects belong to its event loop: a scrape
renders the registry on the loop, so collectors read the drivers between two steps of the
loop, never while a step is changing them. A loop that does not answer within
``RENDER_TIMEOUT_S`` gets a 503, which Prometheus records as a failed scrape.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from concurrent.futures import Future
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

RENDER_TIMEOUT_S = 5.0
PATH = "/metrics"


class MetricsServer:
    def __init__(
        self, registry: CollectorRegistry, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self._registry = registry
        self._loop = loop
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "not serving"
        return int(self._httpd.server_address[1])

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition for an Accept header: (body, content type). Runs on the loop."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self._registry), content_type

    def _render_threadsafe(self, accept: str) -> tuple[bytes, str]:
        loop = self._loop
        if loop is None:
            return self.render(accept)

        answer: Future[tuple[bytes, str]] = Future()

        def render_now() -> None:
            if answer.set_running_or_notify_cancel():  # False: the scrape gave up already
                try:
                    answer.set_result(self.render(accept))
                except Exception as e:
                    answer.set_exception(e)

        loop.call_soon_threadsafe(render_now)
        try:
            return answer.result(RENDER_TIMEOUT_S)
        except TimeoutError:
            answer.cancel()
            raise

    def start(self, host: str, port: int) -> None:
        """Binds (OSError on a port in use) and serves in a daemon thread."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != PATH:
                    self._answer(HTTPStatus.NOT_FOUND, b"not found; metrics are at /metrics\n")
                    return
                try:
                    body, content_type = server._render_threadsafe(self.headers.get("Accept", ""))
                except TimeoutError:
                    self._answer(
                        HTTPStatus.SERVICE_UNAVAILABLE,
                        b"the node's event loop did not answer in time\n",
                    )
                    return
                except Exception as e:  # a broken collector: say so, keep serving
                    log.warning("metrics: rendering failed: %s: %s", type(e).__name__, e)
                    self._answer(HTTPStatus.INTERNAL_SERVER_ERROR, b"rendering metrics failed\n")
                    return
                self._answer(HTTPStatus.OK, body, content_type)

            def _answer(
                self, status: HTTPStatus, body: bytes, content_type: str = "text/plain"
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every 15 s is not news

        httpd_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        httpd = httpd_class((host, port), Handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6

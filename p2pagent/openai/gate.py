"""The door's own outer layer (a plain ASGI middleware, inside Starlette's error middleware):
refuses a request over ``openai.max_connections`` in OpenAI's error shape, and answers a bug
of ours with one logged traceback and OpenAI's 500.

Why not uvicorn's ``limit_concurrency``: beyond it uvicorn answers a plain-text 503 that
OpenAI's clients cannot parse. So uvicorn runs without a limit, ``PeerCertProtocol`` puts
uvicorn's live server state (its open connections and running requests) into each
connection's ``state``, and this layer counts them the same way.

Why not a FastAPI ``exception_handler(Exception)``: Starlette calls that handler and then
raises the exception again to the server, which logs the same traceback a second time.
Here the exception stops: logged once, answered once.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from p2pagent import errors
from p2pagent.openai.errors import HttpError, http_error

log = logging.getLogger(__name__)

#: Key of uvicorn's server state in a connection's ASGI ``state`` (set by PeerCertProtocol).
SERVER_LOAD = "p2pagent.server_load"


class ServerLoad(Protocol):
    """What the gate reads of uvicorn's ``ServerState``: both sets include this request."""

    connections: set[Any]
    tasks: set[Any]


def over_limit(load: ServerLoad, limit: int) -> bool:
    """Whether a request, counted in ``load``, exceeds ``limit`` open connections or
    requests in progress."""
    return len(load.connections) > limit or len(load.tasks) > limit


class DoorGate:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        load = (scope.get("state") or {}).get(SERVER_LOAD)
        if load is not None and over_limit(load, self.limit):
            busy = errors.Unavailable(
                f"the OpenAI door is serving its limit of {self.limit} connections and "
                "requests (openai.max_connections); retry shortly"
            )
            refusal = http_error(busy)
            await _send_json(send, refusal, {"retry-after": "1", "connection": "close"})
            return
        started = complete = False

        async def tracked(message: Message) -> None:
            nonlocal started, complete
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                complete = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            log.error("OpenAI door: unexpected %s: %s", type(exc).__name__, exc, exc_info=exc)
            if not started:
                bug = errors.Internal(
                    "internal error in the OpenAI door; the node's log has the details"
                )
                await _send_json(send, http_error(bug), {})
            elif not complete:  # a body under way: end it (the client sees it cut short)
                await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_json(send: Send, e: HttpError, extra: dict[str, str]) -> None:
    body = json.dumps(e.body).encode()
    headers = {**e.headers, **extra, "content-type": "application/json"}
    headers["content-length"] = str(len(body))
    await send(
        {
            "type": "http.response.start",
            "status": e.status,
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})

"""What a streaming call the guard serves gives its handler: how to end it with an error
(``stream_ender``), the per-request rate check of a multiplexed stream
(``request_rate_check``), and, for a server-streaming method whose behaviour returns its last
message (``answers_last``), how to write the messages before it (``stream_writer``). The guard
(``transport.guard``) sets them for each call it registers in ``transport.streams``; it
reads a refused client stream's first message before refusing (``refused_stream_read``)."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

from p2pagent import errors
from p2pagent.transport.streams import OpenStream

#: Ends the stream the current handler serves with an error (``OpenStreams.end``: at once
#: while the handler waits in our code, else when grpc's write returns). Set by the guard
#: for every streaming call it registers; a handler's child tasks inherit it.
_end_stream: contextvars.ContextVar[Callable[[errors.P2PAgentError], None] | None] = (
    contextvars.ContextVar("p2pagent_end_stream", default=None)
)


def stream_ender() -> Callable[[errors.P2PAgentError], None] | None:
    """How to end the streaming call being served (None outside the guard: a unit test)."""
    return _end_stream.get()


#: Checks one request of a multiplexed stream against its caller's rate limit (raises
#: ResourceExhausted over it): each request on such a stream counts as a call would.
_rate_check: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "p2pagent_rate_check", default=None
)


def request_rate_check() -> Callable[[], None] | None:
    """The per-request rate check of the multiplexed stream being served (None: no limit)."""
    return _rate_check.get()


#: Marks a server-streaming behaviour (a coroutine) that returns its stream's last message
#: (``answers_last``), the attribute the guard looks for.
_ANSWERS_LAST = "_p2pagent_answers_last"


def answers_last(behavior: Callable[..., Awaitable[Any]]) -> Any:
    """Marks the coroutine serving a server-streaming method as one that writes its earlier
    messages with :func:`stream_writer` and returns the last, which grpc then sends with the
    call's status in one batch, as it answers a unary call. Written one at a time, a stream's
    last message and its status are two sends, each awaited (grpc's write returns once its
    send completes), and the client reads them apart: a one-message stream (a SubmitAndWait
    run at once, a Wait on a finished task) cost 0.1-0.2 ms more than a unary call (issue 26).
    On the wire the two are the same: a server stream's client cannot tell them apart.
    (Typed ``Any``: the generated servicer declares these methods as returning iterators.)"""
    setattr(behavior, _ANSWERS_LAST, True)
    return behavior


#: Writes one message of the stream the current handler serves (``answers_last``).
_stream_write: contextvars.ContextVar[Callable[[Any], Awaitable[None]] | None] = (
    contextvars.ContextVar("p2pagent_stream_write", default=None)
)


def stream_writer() -> Callable[[Any], Awaitable[None]]:
    """How an ``answers_last`` behaviour writes a message before its last: a write the stream
    registry never cancels (``transport.streams``) and that ends the call with the stream's
    error if it was ended meanwhile."""
    write = _stream_write.get()
    if write is None:
        raise RuntimeError("stream_writer() outside a streaming call the guard serves")
    return write


class _StreamWrites:
    """``stream_writer`` of one call: writes outside the registry's reach."""

    __slots__ = ("context", "failed", "serialize", "stream")

    def __init__(
        self, stream: OpenStream, context: Any, serialize: Callable[[Any], bytes] | None
    ) -> None:
        self.stream = stream
        self.context = context
        # grpc gives a unary call's context no serializer: its writes take bytes.
        self.serialize = serialize
        #: grpc's write failed with this (the call is gone): grpc ends the call itself.
        self.failed: BaseException | None = None

    async def __call__(self, message: Any) -> None:
        stream = self.stream
        stream.busy = False
        try:
            await self.context.write(message if self.serialize is None else self.serialize(message))
        except Exception as e:
            self.failed = e
            raise
        finally:
            stream.busy = True
        if stream.ended is not None:
            raise stream.ended  # ended while grpc was writing


#: How long a refused client stream is given to deliver its first message.
FIRST_ITEM_WAIT_S = 2.0


async def refused_stream_read(request: Any) -> None:
    """Waits, briefly, for a refused client stream's first message. A grpc.aio client whose
    write meets a call already ended loses the status to "Internal error from Core"
    (grpc/grpc#36066); an uploader sends its header, then waits for the node's cue
    (models.upload), so refusing after the header has arrived reaches it with the reason."""
    if hasattr(request, "__aiter__"):
        try:
            await asyncio.wait_for(anext(aiter(request), None), FIRST_ITEM_WAIT_S)
        except Exception:
            pass  # refused either way; the reason is what matters

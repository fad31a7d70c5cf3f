"""The node's open streams, by caller identity: so a revocation, or the expiry of the
certificate a stream was opened with, can end it, and so one identity cannot hold an unbounded
number of them.

The guard registers every streaming call (server, client or both directions) when it starts
and unregisters it when it ends. Ending a stream from outside has one subtlety: grpc.aio sends
no status for a handler task cancelled while it is inside grpc's own write (the client would
hang), so a stream is cancelled only while its handler is inside our code (``busy``: waiting
for the next item); a stream parked in grpc's write (a consumer that stopped reading) is only
marked, and the guard ends it with the error as soon as the write returns. Either way nothing
more is produced for it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from p2pagent import errors
from p2pagent.identity.spiffe import Identity, Role


@dataclass(eq=False)
class OpenStream:
    """One streaming call in progress."""

    identity: Identity
    task: asyncio.Task[Any] | None
    #: True while the handler waits inside our code (safe to cancel), False while it is in
    #: grpc's write or not started.
    busy: bool = False
    #: Set once the stream must end: the error the caller gets.
    ended: errors.P2PAgentError | None = None
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)


class OpenStreams:
    def __init__(self, max_per_identity: int) -> None:
        #: Most streams one non-node identity may hold open on this node (0 = no cap).
        self.max_per_identity = max_per_identity
        self._by_uri: dict[str, set[OpenStream]] = {}

    def count(self, uri: str) -> int:
        return len(self._by_uri.get(uri, ()))

    def total(self) -> int:
        return sum(len(s) for s in self._by_uri.values())

    def open(self, ident: Identity, not_after: float | None) -> OpenStream:
        """Registers a stream of ``ident`` run by the current task; ``not_after`` (unix time)
        is when the caller's certificate expires. Raises ResourceExhausted over the cap."""
        held = self._by_uri.setdefault(ident.uri, set())
        cap = self.max_per_identity
        if cap and ident.role is not Role.NODE and len(held) >= cap:
            raise errors.ResourceExhausted(
                f"{ident} already holds {len(held)} open streams on this node, the most "
                f"allowed (transport.max_streams_per_identity = {cap}); close some first"
            )
        try:
            task: asyncio.Task[Any] | None = asyncio.current_task()
        except RuntimeError:
            task = None
        stream = OpenStream(ident, task)
        held.add(stream)
        if not_after is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, not_after - time.time())
            stream.expiry = loop.call_later(
                delay,
                self.end,
                stream,
                errors.PermissionDenied(
                    f"the certificate of {ident} expired; reconnect with a renewed certificate"
                ),
            )
        return stream

    def close(self, stream: OpenStream) -> None:
        if stream.expiry is not None:
            stream.expiry.cancel()
        held = self._by_uri.get(stream.identity.uri)
        if held is not None:
            held.discard(stream)
            if not held:
                del self._by_uri[stream.identity.uri]

    def end(self, stream: OpenStream, error: errors.P2PAgentError) -> None:
        """Ends ``stream`` with ``error`` now if its handler waits in our code, else as soon as
        grpc's write returns."""
        if stream.ended is not None:
            return
        stream.ended = error
        if stream.busy and stream.task is not None:
            stream.task.cancel()

    def end_identity(self, uri: str, error: errors.P2PAgentError) -> int:
        """Ends every open stream of ``uri``; returns how many."""
        held = list(self._by_uri.get(uri, ()))
        for stream in held:
            self.end(stream, error)
        return len(held)

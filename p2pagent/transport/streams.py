"""The node's open streams, by caller identity: so a revocation, or the expiry of the
certificate a stream was opened with, can end it, and so one identity cannot hold an unbounded
number of them.

The guard registers every streaming call (server, client or both directions) when it starts
and unregisters it when it ends. Ending a stream from outside has one subtlety: grpc.aio sends
no status for a handler task cancelled while it is inside grpc's own write (the client would
hang), so a stream is cancelled only while its handler is inside our code (``busy``: waiting
for the next item); a stream parked in grpc's write (a consumer that stopped reading) is
marked, and the guard ends it with the error as soon as the write returns. Either way nothing
more is produced for it. A marked stream still parked ``CUT_GRACE_S`` later has its
connection shut down (``transport.connections.cut``; the connection is the same caller's,
authenticated by its certificate), which makes grpc fail the parked write and end the call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pagent import errors
from p2pagent.identity.spiffe import Identity, Role
from p2pagent.transport import connections

log = logging.getLogger(__name__)

#: How long a stream ended while parked in grpc's write may stay parked (its client may be
#: about to read, and then it gets the error) before its connection is shut down.
CUT_GRACE_S = 1.0


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
    #: The gRPC peer (``ipv4:host:port``) the stream's connection comes from.
    peer: str = ""
    cut_timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class OpenStreams:
    def __init__(
        self,
        max_per_identity: int,
        cut: Callable[[str], bool] = connections.cut,
        cut_grace_s: float = CUT_GRACE_S,
    ) -> None:
        #: Most streams one non-node identity may hold open on this node (0 = no cap).
        self.max_per_identity = max_per_identity
        self._by_uri: dict[str, set[OpenStream]] = {}
        self._cut = cut
        self._cut_grace_s = cut_grace_s
        #: Connections shut down to end parked streams (for stats and tests).
        self.cuts = 0

    def count(self, uri: str) -> int:
        return len(self._by_uri.get(uri, ()))

    def total(self) -> int:
        return sum(len(s) for s in self._by_uri.values())

    def open(self, ident: Identity, not_after: float | None, peer: str = "") -> OpenStream:
        """Registers a stream of ``ident`` run by the current task, from ``peer`` (its gRPC
        peer string); ``not_after`` (unix time) is when the caller's certificate expires.
        Raises ResourceExhausted over the cap."""
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
        stream = OpenStream(ident, task, peer=peer)
        held.add(stream)
        if not_after is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, not_after - time.time())
            stream.expiry = loop.call_later(delay, self._expired, stream)
        return stream

    def _expired(self, stream: OpenStream) -> None:
        # The error is made here, not when the stream opens: most streams end long before.
        self.end(
            stream,
            errors.PermissionDenied(
                f"the certificate of {stream.identity} expired; reconnect with a renewed "
                "certificate"
            ),
        )

    def close(self, stream: OpenStream) -> None:
        if stream.expiry is not None:
            stream.expiry.cancel()
        if stream.cut_timer is not None:
            stream.cut_timer.cancel()
        held = self._by_uri.get(stream.identity.uri)
        if held is not None:
            held.discard(stream)
            if not held:
                del self._by_uri[stream.identity.uri]

    def end(self, stream: OpenStream, error: errors.P2PAgentError) -> None:
        """Ends ``stream`` with ``error`` now if its handler waits in our code, else as soon as
        grpc's write returns, or its connection is cut if that write is still parked
        ``cut_grace_s`` later."""
        if stream.ended is not None:
            return
        stream.ended = error
        if stream.busy and stream.task is not None:
            stream.task.cancel()
        elif stream.peer:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # not on a loop (a unit test): nothing to cut with
            stream.cut_timer = loop.call_later(self._cut_grace_s, self._cut_if_open, stream)

    def _cut_if_open(self, stream: OpenStream) -> None:
        stream.cut_timer = None
        if stream not in self._by_uri.get(stream.identity.uri, ()):
            return  # it ended on its own meanwhile
        if stream.busy and stream.task is not None:
            stream.task.cancel()  # back in our code: the guard answers with the error
            return
        if self._cut(stream.peer):
            self.cuts += 1
            log.warning(
                "shut down the connection of %s from %s: its stream was ended (%s) while its "
                "client was not reading",
                stream.identity, stream.peer, stream.ended,
            )  # fmt: skip

    def end_identity(self, uri: str, error: errors.P2PAgentError) -> int:
        """Ends every open stream of ``uri``; returns how many."""
        held = list(self._by_uri.get(uri, ()))
        for stream in held:
            self.end(stream, error)
        return len(held)

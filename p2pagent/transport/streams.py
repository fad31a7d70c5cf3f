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

The certificate's expiry is not looked at when a stream opens: most streams (a SubmitAndWait,
a Wait on a finished task) end within milliseconds, and reading the expiry (grpc's auth
context) and arming and cancelling a timer was most of what registering one cost (issue 26).
One shared check, armed while streams open, runs ``expiry_check_s`` after the first of them:
each stream it finds still open then has its expiry read and its own timer armed, which ends
it when the certificate expires. So a stream is ended at its certificate's expiry, or, when
the certificate expires within its first ``expiry_check_s``, at most that much later.
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

#: How long a stream may be open before its certificate's expiry is read and timed (above).
EXPIRY_CHECK_S = 1.0
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
    #: When the caller's certificate expires (unix time, None: unknown), or how to read it
    #: (read only if the stream is still open at the next expiry check).
    not_after: float | Callable[[], float | None] | None = field(default=None, repr=False)
    #: The gRPC peer (``ipv4:host:port``) the stream's connection comes from, or how to read
    #: it (read only to cut the connection).
    peer_of: str | Callable[[], str] = field(default="", repr=False)
    cut_timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def peer(self) -> str:
        if callable(self.peer_of):
            self.peer_of = self.peer_of()
        return self.peer_of


class OpenStreams:
    def __init__(
        self,
        max_per_identity: int,
        cut: Callable[[str], bool] = connections.cut,
        cut_grace_s: float = CUT_GRACE_S,
        expiry_check_s: float = EXPIRY_CHECK_S,
    ) -> None:
        #: Most streams one non-node identity may hold open on this node (0 = no cap).
        self.max_per_identity = max_per_identity
        self._by_uri: dict[str, set[OpenStream]] = {}
        self._cut = cut
        self._cut_grace_s = cut_grace_s
        self._expiry_check_s = expiry_check_s
        #: Streams opened since the last expiry check (their expiry not read yet).
        self._unchecked: set[OpenStream] = set()
        self._check: asyncio.TimerHandle | None = None
        #: Expiries read and timed (streams that outlived ``expiry_check_s``; for tests).
        self.expiries_timed = 0
        #: Connections shut down to end parked streams (for stats and tests).
        self.cuts = 0

    def count(self, uri: str) -> int:
        return len(self._by_uri.get(uri, ()))

    def total(self) -> int:
        return sum(len(s) for s in self._by_uri.values())

    def open(
        self,
        ident: Identity,
        not_after: float | Callable[[], float | None] | None,
        peer: str | Callable[[], str] = "",
    ) -> OpenStream:
        """Registers a stream of ``ident`` run by the current task, from ``peer`` (its gRPC
        peer string, or how to read it); ``not_after`` (unix time, or how to read it) is when
        the caller's certificate expires. Raises ResourceExhausted over the cap."""
        held = self._by_uri.get(ident.uri)
        if held is None:
            held = self._by_uri[ident.uri] = set()
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
        stream = OpenStream(ident, task, not_after=not_after, peer_of=peer)
        held.add(stream)
        if not_after is not None:
            self._unchecked.add(stream)
            if self._check is None:
                loop = asyncio.get_running_loop()
                self._check = loop.call_later(self._expiry_check_s, self._check_expiries)
        return stream

    def _check_expiries(self) -> None:
        """Times the certificate expiry of every stream opened since the last check that is
        still open (the others never needed it)."""
        self._check = None
        unchecked, self._unchecked = self._unchecked, set()
        if not unchecked:
            return
        loop = asyncio.get_running_loop()
        now = time.time()
        for stream in unchecked:
            not_after = stream.not_after
            if callable(not_after):
                not_after = stream.not_after = not_after()
            if not_after is None:
                continue
            self.expiries_timed += 1
            stream.expiry = loop.call_later(max(0.0, not_after - now), self._expired, stream)

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
        self._unchecked.discard(stream)
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

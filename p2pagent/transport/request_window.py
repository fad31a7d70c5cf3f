"""The bookkeeping of one multiplexed stream (``InferStream``, ``SubmitStream``): which
requests await their answer, and what to do with each message that arrives.

Pure: no asyncio, no grpc. The glue (``transport.multiplexed``) calls ``arrive`` for each
request message, ``answered`` when a request's answer is ready to send and ``written`` when
grpc has taken it, and asks ``finished`` after the client half-closed.

The rules (the issue's "Bad input" list): each bad request is answered alone with its error
and the stream goes on. A request id reused while in flight, or more requests in flight than
``limit``, is refused. A request counts as in flight from its arrival until its answer is
*written*, not merely computed, so a client that stops reading cannot make the node hold more
than ``limit`` answers. Refusals are answers too and wait for the same writer; when more than
``limit`` of them are waiting, the client is sending without reading, and the stream is ended
(``Overrun``) instead of queueing more.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from p2pagent.errors import InvalidArgument, P2PAgentError, ResourceExhausted


class Action(Enum):
    """What to do with an arriving message."""

    RUN = "run"  # a new request: start it
    CANCEL = "cancel"  # a cancel of a request still running: stop it, answer CANCELLED
    IGNORE = "ignore"  # a cancel of a request already answered (or unknown): nothing to do
    REFUSE = "refuse"  # a bad request: answer it alone with ``Verdict.error``


@dataclass(frozen=True)
class Verdict:
    action: Action
    error: P2PAgentError | None = None


class Overrun(ResourceExhausted):
    """The client sent more requests than it read answers for: the stream ends with this."""


class RequestWindow:
    """The requests of one stream that await their answer, bounded by ``limit``."""

    def __init__(self, limit: int, setting: str) -> None:
        if limit < 1:
            raise ValueError(f"{setting} must be >= 1, got {limit}")
        self.limit = limit
        self._setting = setting
        self._running: set[int] = set()  # arrived, answer not computed yet
        self._unwritten: set[int] = set()  # answer computed, grpc has not taken it yet
        self._refusals = 0  # refusal answers waiting for the writer
        self.half_closed = False

    @property
    def in_flight(self) -> int:
        return len(self._running) + len(self._unwritten)

    def running(self, request_id: int) -> bool:
        return request_id in self._running

    def arrive(self, request_id: int, cancel: bool) -> Verdict:
        """The verdict on a message; raises ``Overrun`` when the stream must end."""
        if self.half_closed:
            # grpc cannot deliver this; the glue asks anyway so the rule lives here.
            return self.refuse(
                InvalidArgument(
                    f"request {request_id} arrived after the client half-closed the stream; "
                    "open a new stream"
                )
            )
        if cancel:
            if request_id in self._running:
                return Verdict(Action.CANCEL)
            return Verdict(Action.IGNORE)  # answered meanwhile (or never sent): nothing owed
        if request_id in self._running or request_id in self._unwritten:
            return self.refuse(
                InvalidArgument(
                    f"request id {request_id} is already in flight on this stream; give "
                    "each request in flight its own id"
                )
            )
        if self.in_flight >= self.limit:
            return self.refuse(
                ResourceExhausted(
                    f"{self.in_flight} requests are already in flight on this stream, the most "
                    f"allowed ({self._setting} = {self.limit}); wait for an answer before "
                    "sending more",
                    retry_after_s=None,
                )
            )
        self._running.add(request_id)
        return Verdict(Action.RUN)

    def refuse(self, error: P2PAgentError) -> Verdict:
        """Counts a refusal answer (a bad request, or a message that could not be read);
        raises ``Overrun`` when too many wait to be written."""
        if self._refusals >= self.limit:
            raise Overrun(
                f"more than {self.limit} refused requests wait to be read on this stream "
                f"({self._setting} = {self.limit}): the client sends without reading its "
                "answers; read them, and send at most that many requests at once"
            )
        self._refusals += 1
        return Verdict(Action.REFUSE, error)

    def answered(self, request_id: int) -> None:
        """The request's answer (result, error or CANCELLED) is ready to be written."""
        if request_id in self._running:
            self._running.discard(request_id)
            self._unwritten.add(request_id)

    def written(self, request_id: int | None) -> None:
        """grpc took the answer of ``request_id`` (None: a refusal's answer)."""
        if request_id is None:
            self._refusals = max(0, self._refusals - 1)
        else:
            self._unwritten.discard(request_id)

    def half_close(self) -> None:
        self.half_closed = True

    @property
    def finished(self) -> bool:
        """The client half-closed and every answer owed has been written: end the stream."""
        return (
            self.half_closed and not self._running and not self._unwritten and (self._refusals == 0)
        )

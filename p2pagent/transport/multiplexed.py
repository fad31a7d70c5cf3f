"""Serving a multiplexed bidirectional stream: many requests on one call, each answered as
it completes, under its own id.

The glue around ``request_window.RequestWindow`` (which holds the rules). One reader task
takes messages off the stream as they come and starts each request: ``StreamProtocol.run``
either answers at once (it raised), hands back a future already under way (no task at all),
or a coroutine, which becomes a task. Each request's completion is a callback that puts its
answer on one deque; the handler's generator, the stream's only writer, hands them to grpc
one at a time (grpc writes one message at once). Deadlines come from one heap per stream
with one timer for the earliest, not an asyncio timeout per request (issue 26: the per-request
glue was a task, a timeout and a queue entry). A request's errors, deadline and cancellation
are its own: they become its answer and the stream goes on. What ends the stream: the client
half-closing (once every answer owed is written), the call ending, or ``Overrun`` (the client
sends without reading).
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from p2pagent import errors
from p2pagent.transport.guard import refusal_of, request_rate_check, stream_ender
from p2pagent.transport.request_window import Action, Overrun, RequestWindow

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")

#: Sends an answer before the request's final one (SubmitStream's "journaled" event).
Send = Callable[[Any], None]


@dataclass(frozen=True)
class StreamProtocol(Generic[Req, Resp]):
    """What one multiplexed RPC is: how to run a request, how to read its id, deadline and
    cancel flag, and how to write an error as an answer."""

    #: Starts one request towards its final answer (or what ``answer`` makes it from); may
    #: ``send`` earlier answers first. Returns a future already under way (cancelling it
    #: stops the request) or a coroutine (run as a task); raising answers the request with
    #: the error at once.
    run: Callable[[Req, Send], Awaitable[Any]]
    request_id: Callable[[Req], int]
    cancel: Callable[[Req], bool]
    #: Seconds this request may take from its arrival (None: no deadline of its own).
    timeout_s: Callable[[Req], float | None]
    #: The answer carrying ``error`` (code name, message) for request ``request_id``.
    error_answer: Callable[[int, str, str], Resp]
    #: Asked first when the client cancels a running request: True when the protocol took
    #: the cancel itself (the request then runs on to an answer that tells the client what
    #: the cancel did), False to stop the request and answer CANCELLED.
    on_cancel: Callable[[int], bool] = lambda request_id: False
    #: The final answer from what ``run``'s future gave (None: that is the answer itself).
    #: Lets ``run`` hand back a future of the work's own result (an Infer's task result),
    #: with no coroutine around it just to build the answer; raising answers the error.
    answer: Callable[[int, Any], Resp] | None = None


#: Kinds of queued answers: the final answer of a request (frees its slot once written), a
#: refusal (frees a refusal slot), an earlier answer (nothing to free), the stream's end
#: (its error is raised to the caller once the answers before it are written).
_FINAL, _REFUSAL, _EARLY, _END = 0, 1, 2, 3

#: The heap of deadlines is rebuilt without the requests already answered once it holds more
#: than this many entries per running request (plus a constant): at most a few times the
#: in-flight bound, however long the deadlines.
_HEAP_SLACK = 2


class _Stream(Generic[Resp]):
    """The running requests of one stream, their deadlines and the answers to write."""

    def __init__(self, protocol: StreamProtocol[Any, Resp], window: RequestWindow) -> None:
        self.protocol = protocol
        self.window = window
        self.loop = asyncio.get_running_loop()
        #: (kind, request id, answer or None, the stream's end error or None), in write order.
        self.out: deque[tuple[int, int, Resp | None, BaseException | None]] = deque()
        self._wake: asyncio.Future[None] | None = None
        #: request id -> the future (or task) that gives its answer.
        self.running: dict[int, asyncio.Future[Resp]] = {}
        #: request id -> its answer when it was stopped (client cancel, deadline): written
        #: when its future reports cancelled. A request stopped while the stream ends has
        #: none and is answered to nobody.
        self._stopped: dict[int, Resp] = {}
        #: (when, arrival order, request id, its future, its timeout_s), earliest first.
        self._deadlines: list[tuple[float, int, int, asyncio.Future[Resp], float]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # ---- answers, to the one writer ----------------------------------------------------

    def push(
        self, kind: int, request_id: int, answer: Resp | None, end: BaseException | None
    ) -> None:
        self.out.append((kind, request_id, answer, end))
        wake = self._wake
        if wake is not None:
            self._wake = None
            if not wake.done():
                wake.set_result(None)

    async def wait(self) -> None:
        """Until something is pushed (returns at once if something is queued)."""
        if self.out:
            return
        self._wake = self.loop.create_future()
        await self._wake

    def answer_error(self, request_id: int, e: errors.P2PAgentError) -> Resp:
        return self.protocol.error_answer(request_id, e.code, str(e))

    def final(self, request_id: int, answer: Resp) -> None:
        self.window.answered(request_id)
        self.push(_FINAL, request_id, answer, None)

    def refuse(self, request_id: int, e: errors.P2PAgentError) -> None:
        self.push(_REFUSAL, request_id, self.answer_error(request_id, e), None)

    # ---- starting and finishing requests -----------------------------------------------

    def start(self, request_id: int, request: Any) -> None:
        protocol = self.protocol

        def send(early: Any) -> None:
            self.push(_EARLY, request_id, early, None)

        try:
            timeout = protocol.timeout_s(request)
            started = protocol.run(request, send)
        except errors.P2PAgentError as e:  # refused before it started: answered now
            self.final(request_id, self.answer_error(request_id, e))
            return
        except Exception as e:
            self.final(request_id, self._internal(request_id, e))
            return
        # A future first: asyncio.ensure_future is Python code, on every request.
        future: asyncio.Future[Resp] = (
            started
            if isinstance(started, asyncio.Future)
            else self.loop.create_task(started)
            if inspect.iscoroutine(started)
            else asyncio.ensure_future(started)
        )
        self.running[request_id] = future
        future.add_done_callback(partial(self._finished, request_id))  # C: no lambda frame
        if timeout is not None:
            self._add_deadline(request_id, future, timeout)

    def _finished(self, request_id: int, future: asyncio.Future[Resp]) -> None:
        if self.running.get(request_id) is not future:
            return  # the stream ended: nobody reads the answer
        del self.running[request_id]
        stopped = self._stopped.pop(request_id, None)
        if future.cancelled():
            if stopped is not None:  # else the stream is ending
                self.final(request_id, stopped)
            else:
                # Cancelled from elsewhere (the protocol's own work gave up): an answer is
                # still owed, or the client's slot would never free.
                self.final(
                    request_id,
                    self.protocol.error_answer(
                        request_id, "CANCELLED", f"request {request_id} was cancelled"
                    ),
                )
            return
        error = future.exception()
        if error is None:
            answer = self.protocol.answer
            if answer is None:
                self.final(request_id, future.result())
                return
            try:
                self.final(request_id, answer(request_id, future.result()))
            except errors.P2PAgentError as e:
                self.final(request_id, self.answer_error(request_id, e))
            except Exception as e:
                self.final(request_id, self._internal(request_id, e))
        elif isinstance(error, errors.P2PAgentError):
            self.final(request_id, self.answer_error(request_id, error))
        else:
            self.final(request_id, self._internal(request_id, error))

    def _internal(self, request_id: int, e: BaseException) -> Resp:
        # A bug: logged once, answered as INTERNAL, the stream goes on.
        log.error("unexpected error in a multiplexed request", exc_info=e)
        return self.protocol.error_answer(
            request_id, "INTERNAL", f"internal error: {type(e).__name__}: {e}"
        )

    def stop(self, request_id: int, answer: Resp) -> None:
        """Stops a running request; ``answer`` is written once it has stopped."""
        future = self.running.get(request_id)
        if future is None:
            return
        self._stopped[request_id] = answer
        future.cancel()

    def cancel(self, request_id: int) -> None:
        """The client cancelled a running request."""
        if self.protocol.on_cancel(request_id):
            return  # the protocol took it: the request answers what the cancel did
        self.stop(
            request_id,
            self.protocol.error_answer(
                request_id, "CANCELLED", f"request {request_id} was cancelled by the client"
            ),
        )

    # ---- deadlines: one heap, one timer --------------------------------------------------

    def _add_deadline(self, request_id: int, future: asyncio.Future[Resp], timeout: float) -> None:
        at = self.loop.time() + timeout
        heap = self._deadlines
        if len(heap) > _HEAP_SLACK * len(self.running) + 64:
            # Drop the entries of requests already answered (they stay until their deadline
            # otherwise, and a 60 s deadline at thousands of requests a second adds up).
            heap[:] = [e for e in heap if self.running.get(e[2]) is e[3]]
            heapq.heapify(heap)
        heapq.heappush(heap, (at, next(self._seq), request_id, future, timeout))
        if self._timer is None or at < self._timer_at:
            self._arm(at)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self.loop.time()
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, request_id, future, timeout = heapq.heappop(heap)
            if self.running.get(request_id) is not future or request_id in self._stopped:
                continue  # answered (or being stopped) already
            late = errors.DeadlineExceeded(
                f"request {request_id} ran past its timeout_s ({timeout} s); give it more "
                "time or retry"
            )
            self.stop(request_id, self.answer_error(request_id, late))
        if heap:
            self._arm(heap[0][0])

    def close(self) -> list[asyncio.Future[Resp]]:
        """The stream ends: stops every running request (answered to nobody)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        running = list(self.running.values())
        self.running.clear()
        self._stopped.clear()
        self._deadlines.clear()
        for future in running:
            future.cancel()
        return running

    # ---- reading ---------------------------------------------------------------------

    async def read(self, requests: AsyncIterator[Any]) -> None:
        protocol, window = self.protocol, self.window
        rate_check = request_rate_check()
        try:
            async for item in requests:
                bad = refusal_of(item)
                if bad is not None:
                    window.refuse(bad[1])
                    self.refuse(*bad)
                    continue
                request_id = protocol.request_id(item)
                cancel = protocol.cancel(item)
                if rate_check is not None and not cancel:
                    try:
                        rate_check()  # each request counts against the rate limit
                    except errors.ResourceExhausted as e:
                        window.refuse(e)
                        self.refuse(request_id, e)
                        continue
                verdict = window.arrive(request_id, cancel)
                if verdict.action is Action.RUN:
                    self.start(request_id, item)
                elif verdict.action is Action.CANCEL:
                    self.cancel(request_id)
                elif verdict.action is Action.REFUSE:
                    assert verdict.error is not None
                    self.refuse(request_id, verdict.error)
            window.half_close()
            self.push(_EARLY, 0, None, None)  # wakes the writer to check the end
        except Overrun as e:
            # Stop reading (the client's sends now wait on flow control) and end the call;
            # the answers queued are dropped with it, so nothing of this client stays held.
            end = stream_ender()
            if end is not None:
                end(e)
            self.push(_END, 0, None, e)
        except errors.P2PAgentError as e:  # a refused item the guard raised on (defensive)
            self.push(_END, 0, None, e)


async def serve(
    requests: AsyncIterator[Any],
    protocol: StreamProtocol[Any, Resp],
    window: RequestWindow,
) -> AsyncIterator[Resp]:
    """The answers of a multiplexed stream, in order of completion."""
    stream: _Stream[Resp] = _Stream(protocol, window)
    reader = asyncio.create_task(stream.read(requests))
    out = stream.out
    try:
        while not window.finished:
            if not out:
                await stream.wait()
                continue
            kind, request_id, answer, end = out.popleft()
            if end is not None:
                raise end
            if answer is None:
                continue
            # Handed to grpc now: counted as written before the yield, not after it returns.
            # grpc resumes this generator only once the write has completed, and the client
            # may have read this answer and sent its next request by then: a slot it was
            # right to think free would be refused. Held at most: ``limit`` answers here, one
            # in grpc's hands.
            if kind == _FINAL:
                window.written(request_id)
            elif kind == _REFUSAL:
                window.written(None)
            yield answer
    finally:
        reader.cancel()
        pending = [reader, *(f for f in stream.close() if isinstance(f, asyncio.Task))]
        # Let them see the cancel before the call's objects go away.
        await asyncio.gather(*pending, return_exceptions=True)

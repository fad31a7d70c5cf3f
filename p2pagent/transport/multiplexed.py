"""Serving a multiplexed bidirectional stream: many requests on one call, each answered as
it completes, under its own id.

The glue around ``request_window.RequestWindow`` (which holds the rules). One reader task
takes messages off the stream as they come and starts a task per request; answers go to one
queue that the handler's generator hands to grpc, one at a time (grpc writes one message at
once). A request's errors, deadline and cancellation are its own: they become its answer and
the stream goes on. What ends the stream: the client half-closing (once every answer owed is
written), the call ending, or ``Overrun`` (the client sends without reading).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
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

    #: Runs one request to its final answer; may ``send`` earlier answers first.
    run: Callable[[Req, Send], Awaitable[Resp]]
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


#: Kinds of queued answers: the final answer of a request (frees its slot once written), a
#: refusal (frees a refusal slot), an earlier answer (nothing to free).
_FINAL, _REFUSAL, _EARLY = 0, 1, 2


async def serve(
    requests: AsyncIterator[Any],
    protocol: StreamProtocol[Any, Resp],
    window: RequestWindow,
) -> AsyncIterator[Resp]:
    """The answers of a multiplexed stream, in order of completion."""
    out: asyncio.Queue[tuple[int, int, Resp | None, BaseException | None]] = asyncio.Queue()
    running: dict[int, asyncio.Task[None]] = {}
    cancelled: set[int] = set()

    def answer_error(request_id: int, e: errors.P2PAgentError) -> Resp:
        return protocol.error_answer(request_id, e.code, str(e))

    async def one(request_id: int, request: Any) -> None:
        def send(early: Any) -> None:
            out.put_nowait((_EARLY, request_id, early, None))

        try:
            async with asyncio.timeout(protocol.timeout_s(request)):
                answer = await protocol.run(request, send)
        except TimeoutError:
            answer = answer_error(
                request_id,
                errors.DeadlineExceeded(
                    f"request {request_id} ran past its timeout_s "
                    f"({protocol.timeout_s(request)} s); give it more time or retry"
                ),
            )
        except errors.P2PAgentError as e:
            answer = answer_error(request_id, e)
        except Exception as e:  # a bug: logged once, answered as INTERNAL, the stream goes on
            log.exception("unexpected error in a multiplexed request")
            answer = protocol.error_answer(
                request_id, "INTERNAL", f"internal error: {type(e).__name__}: {e}"
            )
        # (Cancelled: ``ended`` answers it.)
        running.pop(request_id, None)
        cancelled.discard(request_id)
        window.answered(request_id)
        out.put_nowait((_FINAL, request_id, answer, None))

    def ended(request_id: int, task: asyncio.Task[None]) -> None:
        """A request's task is done; one cancelled by the client is answered CANCELLED here
        (a task cancelled before it first ran never enters ``one``'s body)."""
        if not task.cancelled():
            return
        running.pop(request_id, None)
        if request_id in cancelled:  # else the stream is ending: nobody reads the answer
            cancelled.discard(request_id)
            window.answered(request_id)
            answer = protocol.error_answer(
                request_id, "CANCELLED", f"request {request_id} was cancelled by the client"
            )
            out.put_nowait((_FINAL, request_id, answer, None))

    def refuse(request_id: int, e: errors.P2PAgentError) -> None:
        out.put_nowait((_REFUSAL, request_id, answer_error(request_id, e), None))

    rate_check = request_rate_check()

    async def read() -> None:
        try:
            async for item in requests:
                bad = refusal_of(item)
                if bad is not None:
                    window.refuse(bad[1])
                    refuse(*bad)
                    continue
                request_id = protocol.request_id(item)
                cancel = protocol.cancel(item)
                if rate_check is not None and not cancel:
                    try:
                        rate_check()  # each request counts against the rate limit
                    except errors.ResourceExhausted as e:
                        window.refuse(e)
                        refuse(request_id, e)
                        continue
                verdict = window.arrive(request_id, cancel)
                if verdict.action is Action.RUN:
                    task = asyncio.create_task(one(request_id, item))
                    task.add_done_callback(functools.partial(ended, request_id))
                    running[request_id] = task
                elif verdict.action is Action.CANCEL:
                    if not protocol.on_cancel(request_id):
                        cancelled.add(request_id)
                        running[request_id].cancel()
                elif verdict.action is Action.REFUSE:
                    assert verdict.error is not None
                    refuse(request_id, verdict.error)
            window.half_close()
            out.put_nowait((_EARLY, 0, None, None))  # wakes the writer to check the end
        except Overrun as e:
            # Stop reading (the client's sends now wait on flow control) and end the call;
            # the answers queued are dropped with it, so nothing of this client stays held.
            end = stream_ender()
            if end is not None:
                end(e)
            out.put_nowait((_EARLY, 0, None, e))
        except errors.P2PAgentError as e:  # a refused item the guard raised on (defensive)
            out.put_nowait((_EARLY, 0, None, e))

    reader = asyncio.create_task(read())
    try:
        while not window.finished:
            kind, request_id, answer, failure = await out.get()
            if failure is not None:
                raise failure
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
        tasks = [reader, *running.values()]
        for task in tasks:
            task.cancel()
        # Let them see the cancel before the call's objects go away.
        await asyncio.gather(*tasks, return_exceptions=True)

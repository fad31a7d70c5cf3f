"""The multiplexed stream glue over fake requests (no grpc): answers by completion, a
request's own error, deadline and cancellation, the half-close end, and an overrun."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from p2pagent.errors import InvalidArgument, NotFound, ResourceExhausted
from p2pagent.transport.multiplexed import Send, StreamProtocol, serve
from p2pagent.transport.request_window import RequestWindow


@dataclass
class Req:
    request_id: int
    cancel: bool = False
    timeout_s: float | None = None
    fail: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    early: bool = False


@dataclass(frozen=True)
class Answer:
    request_id: int
    code: str = ""
    message: str = ""
    early: bool = False


async def run(request: Req, send: Send) -> Answer:
    if request.early:
        send(Answer(request.request_id, early=True))
    await request.done.wait()
    if request.fail:
        raise NotFound(f"no model for {request.request_id}")
    return Answer(request.request_id)


PROTOCOL: StreamProtocol[Req, Answer] = StreamProtocol(
    run=run,
    request_id=lambda r: r.request_id,
    cancel=lambda r: r.cancel,
    timeout_s=lambda r: r.timeout_s,
    error_answer=lambda i, code, message: Answer(i, code, message),
)


class Inbox:
    """The client's side of the request stream: put requests, then close (half-close)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Req | None] = asyncio.Queue()

    async def __aiter__(self) -> AsyncIterator[Req]:
        while (item := await self.queue.get()) is not None:
            yield item

    def put(self, request: Req) -> None:
        self.queue.put_nowait(request)

    def close(self) -> None:
        self.queue.put_nowait(None)


def window(limit: int = 8) -> RequestWindow:
    return RequestWindow(limit, "transport.stream_max_in_flight")


async def test_answers_by_completion_with_errors_deadlines_and_cancels() -> None:
    inbox = Inbox()
    answers = aiter(serve(inbox.__aiter__(), PROTOCOL, window()))
    slow, quick, bad = Req(1), Req(2), Req(3, fail=True)
    late, cancelled = Req(4, timeout_s=0.01), Req(5)
    for r in (slow, quick, bad, late, cancelled):
        inbox.put(r)
    quick.done.set()
    assert await anext(answers) == Answer(2)  # before 1, sent earlier
    bad.done.set()
    got = await anext(answers)
    assert (got.request_id, got.code) == (3, "NOT_FOUND")
    got = await anext(answers)
    assert (got.request_id, got.code) == (4, "DEADLINE_EXCEEDED")
    inbox.put(Req(5, cancel=True))
    got = await anext(answers)
    assert (got.request_id, got.code) == (5, "CANCELLED")
    inbox.close()
    slow.done.set()
    assert await anext(answers) == Answer(1)
    with pytest.raises(StopAsyncIteration):  # half-closed and every answer written
        await anext(answers)


async def test_early_answers_come_before_the_final_one() -> None:
    inbox = Inbox()
    answers = aiter(serve(inbox.__aiter__(), PROTOCOL, window()))
    r = Req(9, early=True)
    inbox.put(r)
    assert await anext(answers) == Answer(9, early=True)
    r.done.set()
    inbox.close()
    assert await anext(answers) == Answer(9)
    with pytest.raises(StopAsyncIteration):
        await anext(answers)


async def test_a_cancel_the_protocol_takes_lets_the_request_answer_what_it_did() -> None:
    """SubmitStream's case: a cancel before the client knows the task id reaches the task,
    and the request answers with the outcome rather than a bare CANCELLED."""
    taken: list[int] = []

    def on_cancel(request_id: int) -> bool:
        taken.append(request_id)
        return request_id == 7

    protocol = dataclasses.replace(PROTOCOL, on_cancel=on_cancel)
    inbox = Inbox()
    answers = aiter(serve(inbox.__aiter__(), protocol, window()))
    kept, stopped = Req(7), Req(8)
    inbox.put(kept)
    inbox.put(stopped)
    inbox.put(Req(7, cancel=True))
    inbox.put(Req(8, cancel=True))
    got = await anext(answers)
    assert (got.request_id, got.code) == (8, "CANCELLED")  # the protocol left it: stopped
    assert taken == [7, 8]
    kept.done.set()
    assert await anext(answers) == Answer(7)  # ran on to its own answer
    inbox.close()
    with pytest.raises(StopAsyncIteration):
        await anext(answers)


async def test_a_client_that_does_not_read_is_ended() -> None:
    inbox = Inbox()
    answers = aiter(serve(inbox.__aiter__(), PROTOCOL, window(2)))
    for i in range(1, 6):  # 2 run, 2 are refused, the fifth overruns
        inbox.put(Req(i))
    # Nothing read meanwhile: the refusals wait unwritten.
    got = [await anext(answers), await anext(answers)]
    assert [a.code for a in got] == ["RESOURCE_EXHAUSTED"] * 2
    with pytest.raises(ResourceExhausted, match="without reading"):
        await anext(answers)


async def test_each_request_counts_against_the_callers_rate_limit() -> None:
    from p2pagent.transport import guard

    allowed = 2

    def check() -> None:
        nonlocal allowed
        if allowed == 0:
            raise ResourceExhausted("rate limit exceeded for the client; slow down and retry")
        allowed -= 1

    guard._rate_check.set(check)  # what the guard sets for a multiplexed call
    inbox = Inbox()
    answers = aiter(serve(inbox.__aiter__(), PROTOCOL, window()))
    ok = [Req(1), Req(2)]
    for r in ok:
        r.done.set()
        inbox.put(r)
    inbox.put(Req(3))
    inbox.close()
    got = {a.request_id: a.code for a in [await anext(answers) for _ in range(3)]}
    assert got == {1: "", 2: "", 3: "RESOURCE_EXHAUSTED"}


async def test_a_request_refused_by_run_is_answered_at_once_and_frees_its_slot() -> None:
    def run_or_refuse(request: Req, send: Send) -> asyncio.Future[Answer]:
        if request.fail:
            raise NotFound(f"no model for {request.request_id}")
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        future.set_result(Answer(request.request_id))  # already under way: no task made
        return future

    protocol = dataclasses.replace(PROTOCOL, run=run_or_refuse)
    inbox = Inbox()
    answers = aiter(serve(inbox.__aiter__(), protocol, window(1)))
    inbox.put(Req(1, fail=True))
    got = await anext(answers)
    assert (got.request_id, got.code) == (1, "NOT_FOUND")
    inbox.put(Req(1))  # its id and its slot are free again
    assert await anext(answers) == Answer(1)
    inbox.close()
    with pytest.raises(StopAsyncIteration):
        await anext(answers)


async def test_answer_builds_each_answer_from_what_run_gave_and_its_errors_are_the_requests(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``StreamProtocol.answer``: run hands back a future of the work's own result (here a
    number), and the answer is made from it; raising there answers that request alone."""

    def run_number(request: Req, send: Send) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.set_result(request.request_id * 10)
        return future

    def answer(request_id: int, result: int) -> Answer:
        if result == 20:
            raise NotFound(f"result {result} is refused")
        if result == 30:
            raise RuntimeError("a bug")
        return Answer(request_id, message=str(result))

    protocol = dataclasses.replace(PROTOCOL, run=run_number, answer=answer)
    inbox = Inbox()
    answers = aiter(serve(inbox.__aiter__(), protocol, window()))
    for i in (1, 2, 3, 4):
        inbox.put(Req(i))
    inbox.close()
    got = {a.request_id: a async for a in answers}
    assert got[1] == Answer(1, message="10") and got[4] == Answer(4, message="40")
    assert (got[2].code, got[2].message) == ("NOT_FOUND", "result 20 is refused")
    assert got[3].code == "INTERNAL" and "RuntimeError: a bug" in got[3].message
    assert "unexpected error in a multiplexed request" in caplog.text  # the bug is logged


async def test_deadlines_from_one_heap_answer_only_the_late_requests() -> None:
    inbox = Inbox()
    answers = aiter(serve(inbox.__aiter__(), PROTOCOL, window(64)))
    quick = [Req(i, timeout_s=0.05) for i in range(1, 41)]
    slow = Req(50, timeout_s=30)
    for r in quick:
        r.done.set()  # answered long before their deadline
        inbox.put(r)
    late = [Req(60, timeout_s=0.02), Req(61, timeout_s=0.01)]
    for r in (slow, *late):
        inbox.put(r)
    got = [await anext(answers) for _ in range(42)]
    by_id = {a.request_id: a.code for a in got}
    assert all(by_id[r.request_id] == "" for r in quick)
    assert by_id[60] == by_id[61] == "DEADLINE_EXCEEDED"
    assert [a.request_id for a in got[-2:]] == [61, 60]  # the earlier deadline first
    assert "timeout_s (0.01 s)" in got[-2].message
    slow.done.set()
    assert await anext(answers) == Answer(50)
    inbox.close()
    with pytest.raises(StopAsyncIteration):
        await anext(answers)


async def test_the_deadline_heap_stays_bounded_by_the_requests_in_flight() -> None:
    from p2pagent.transport import multiplexed

    stream = multiplexed._Stream(PROTOCOL, window(4))
    for i in range(1, 2001):
        r = Req(i, timeout_s=60)
        r.done.set()
        stream.window.arrive(i, False)
        stream.start(i, r)
        await asyncio.sleep(0)  # it runs and answers
        await asyncio.sleep(0)
        stream.window.written(i)
        stream.out.clear()
    assert not stream.running
    assert len(stream._deadlines) <= 64 + 1
    stream.close()


async def test_a_bad_timeout_is_answered_alone() -> None:
    def timeout_s(request: Req) -> float | None:
        if request.timeout_s is not None and request.timeout_s < 0:
            raise InvalidArgument(f"request {request.request_id}: timeout_s must be >= 0")
        return request.timeout_s

    protocol = dataclasses.replace(PROTOCOL, timeout_s=timeout_s)
    inbox = Inbox()
    answers = aiter(serve(inbox.__aiter__(), protocol, window()))
    good = Req(2)
    good.done.set()
    inbox.put(Req(1, timeout_s=-1))
    inbox.put(good)
    got = {a.request_id: a.code for a in [await anext(answers), await anext(answers)]}
    assert got == {1: "INVALID_ARGUMENT", 2: ""}
    inbox.close()
    with pytest.raises(StopAsyncIteration):
        await anext(answers)


async def test_a_stream_that_ends_stops_its_running_requests() -> None:
    inbox = Inbox()
    gen = serve(inbox.__aiter__(), PROTOCOL, window())
    answers = aiter(gen)
    held = Req(1, timeout_s=30)
    quick = Req(2)
    quick.done.set()
    inbox.put(held)
    inbox.put(quick)
    assert await anext(answers) == Answer(2)
    await gen.aclose()  # the call ended (the client went away)
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert tasks == []  # the request's task and the reader are gone

"""The client's side of a multiplexed stream (``InferStream``, ``SubmitStream``): many calls
of one program to one node share one bidirectional call, each under its own request id.

One ``StreamSession`` per node and RPC, opened on first use. Callers ``request`` with a
message; a reader task hands each answer to the caller waiting for its id. At most
``limit`` requests are in flight (the node refuses more: ``transport.stream_max_in_flight``),
and one writer task sends them in turn (grpc takes one message at once; and a caller
cancelled inside grpc's write would cancel the whole call). A caller that gives up (its task
cancelled, or its local deadline passed) sends a cancel for its id. When the stream
breaks, every caller waiting on it gets the stream's error (an ``AioRpcError``, so the client
moves on to another node as for a unary call) and the next request opens a new stream.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import grpc

#: Opens the bidirectional call (a stub's ``InferStream`` or ``SubmitStream``).
Open = Callable[[], Any]
#: Builds the request message for ``request_id``, or the cancel of it.
Build = Callable[[int], Any]


class StreamSession:
    """Requests to one node on one multiplexed stream of one RPC."""

    def __init__(self, open_call: Open, limit: int) -> None:
        self._open = open_call
        self._slots = asyncio.Semaphore(limit)
        self._ids = itertools.count(1)
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        #: request id -> (each early answer's callback, the final answer's future)
        self._pending: dict[int, tuple[Callable[[Any], None] | None, asyncio.Future[Any]]] = {}

    def _ensure_open(self) -> Any:
        if self._call is None:
            self._call = self._open()
            self._outbox = asyncio.Queue()
            self._reader = asyncio.create_task(self._read(self._call))
            self._writer = asyncio.create_task(self._write(self._call, self._outbox))
        return self._call

    @staticmethod
    async def _write(call: Any, outbox: asyncio.Queue[Any]) -> None:
        try:
            while True:
                await call.write(await outbox.get())
        except Exception:
            return  # the stream broke: the reader fails the requests waiting on it

    async def _read(self, call: Any) -> None:
        error: BaseException
        try:
            while True:
                answer = await call.read()
                if answer is grpc.aio.EOF:
                    error = ConnectionError("the node ended the stream")
                    break
                entry = self._pending.get(answer.request_id)
                if entry is None:
                    continue  # a request given up on: its answer is not wanted
                early, final = entry
                if early is not None and _is_early(answer):
                    early(answer)
                    continue
                self._pending.pop(answer.request_id, None)
                if not final.done():
                    final.set_result(answer)
        except grpc.aio.AioRpcError as e:
            error = e
        except asyncio.CancelledError:
            error = ConnectionError("the client closed the stream")
        if self._call is call:
            self._call = None
            if self._writer is not None:
                self._writer.cancel()  # it would wait on this stream's outbox for ever
        pending, self._pending = self._pending, {}
        for _, future in pending.values():
            if not future.done():
                future.set_exception(error)

    async def request(
        self,
        build: Build,
        cancel: Build,
        timeout_s: float | None,
        early: Callable[[Any], None] | None = None,
    ) -> Any:
        """Sends ``build(id)`` and returns its final answer (raises the stream's error if the
        stream breaks first; TimeoutError after ``timeout_s``, having cancelled it)."""
        async with self._slots:
            request_id = next(self._ids)
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            call = self._ensure_open()
            self._pending[request_id] = (early, future)
            outbox = self._outbox
            outbox.put_nowait(build(request_id))
            try:
                async with asyncio.timeout(timeout_s):
                    return await future
            except (asyncio.CancelledError, TimeoutError):
                if self._pending.pop(request_id, None) is not None and self._call is call:
                    outbox.put_nowait(cancel(request_id))
                raise
            except grpc.aio.AioRpcError:
                self._pending.pop(request_id, None)
                raise

    async def close(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        tasks = [t for t in (self._reader, self._writer) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class StreamSessions:
    """A client's sessions: one per node and RPC, opened on first use."""

    def __init__(self, stub: Callable[[str], Any], in_flight: int) -> None:
        from p2pagent.errors import InvalidArgument

        if in_flight < 1:
            raise InvalidArgument("stream_in_flight must be >= 1 (requests in flight per node)")
        self._stub = stub
        self._in_flight = in_flight
        self._sessions: dict[tuple[str, str], StreamSession] = {}

    def get(self, target: str, rpc: str) -> StreamSession:
        """The session of ``rpc`` ("InferStream", "SubmitStream") to node ``target``."""
        session = self._sessions.get((target, rpc))
        if session is None:
            session = StreamSession(getattr(self._stub(target), rpc), self._in_flight)
            self._sessions[target, rpc] = session
        return session

    def __len__(self) -> int:
        return len(self._sessions)

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()


def _is_early(answer: Any) -> bool:
    """SubmitStream's "journaled" answer (an event not yet final); InferStream has none."""
    event = getattr(answer, "event", None)
    if event is None or answer.error_code:
        return False
    from p2pagent._proto import agent_pb2

    final = (agent_pb2.TaskEvent.KIND_DONE, agent_pb2.TaskEvent.KIND_FAILED)
    return answer.HasField("event") and event.kind not in final

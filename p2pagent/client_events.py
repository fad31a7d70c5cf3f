"""A task's event stream (Wait, SubmitAndWait) as the Python client reads it: the events,
the failures raised as our errors, the final event."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable

import grpc

from p2pagent._proto import agent_pb2
from p2pagent.errors import Unavailable
from p2pagent.transport.errors import error_from_rpc

#: The answers of Wait and SubmitAndWait: each carries one event of the task.
EventAnswer = agent_pb2.WaitResponse | agent_pb2.SubmitAndWaitResponse


async def final_event(
    call: AsyncIterable[EventAnswer],
    on_event: Callable[[agent_pb2.TaskEvent], object] | None,
) -> agent_pb2.TaskEvent:
    """The stream's final event (DONE or FAILED), each event to ``on_event`` on the way."""
    async for event in events(call):
        if on_event is not None:
            on_event(event)
        if event.kind in (agent_pb2.TaskEvent.KIND_DONE, agent_pb2.TaskEvent.KIND_FAILED):
            return event
    raise Unavailable("the task's stream ended without its result")


async def events(call: AsyncIterable[EventAnswer]) -> AsyncIterator[agent_pb2.TaskEvent]:
    """A task-event stream whose non-UNAVAILABLE failures are raised as our errors (UNAVAILABLE
    stays a grpc error, for ``Client._call`` to move on)."""
    try:
        async for answer in call:
            yield answer.event
    except grpc.aio.AioRpcError as e:
        if e.code() is grpc.StatusCode.UNAVAILABLE:
            raise
        raise error_from_rpc(e) from e

"""What ``Wait`` callers of one origin read: the results delivered here (journaled first), each
task's submission time and model, and each waiting task's own wake-up.

A ``Wait`` caller sleeps until its task changes (a lifecycle event, or its result stored), not
until anything changes: with one wake-up shared by every waiter, each result or event woke
every caller of the node to find nothing new, so ``n`` waiting callers cost ``n`` wake-ups per
change. Here each task with callers waiting has one :class:`asyncio.Event`, set and dropped
when that task changes or is forgotten; a task nobody waits for costs nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from p2pagent._proto import agent_pb2
from p2pagent.errors import NotFound, Unavailable, quoted
from p2pagent.membership.view import PeerDirectory
from p2pagent.tasks.lifecycle import TaskLifecycle
from p2pagent.tasks.results import TaskResult
from p2pagent.tasks.spec import MAX_TASK_ID
from p2pagent.tasks.wire import error_from_code, event_proto, result_event

if TYPE_CHECKING:
    from p2pagent.transport.channels import ChannelPool


class ResultStore:
    """The results of this origin's finished tasks, by task id, with their waiters."""

    def __init__(self) -> None:
        self.results: dict[str, TaskResult] = {}
        #: Task id -> (submission time, model), for ``ListTasks``.
        self.submitted_at: dict[str, tuple[float, str]] = {}
        #: Task id -> the event its waiters sleep on; set and dropped at the task's next change.
        self._waiting: dict[str, asyncio.Event] = {}

    def __len__(self) -> int:
        return len(self.results)

    def get(self, task_id: str) -> TaskResult | None:
        return self.results.get(task_id)

    def __setitem__(self, task_id: str, result: TaskResult) -> None:
        """Keeps ``result`` (durable already) and wakes the task's waiters."""
        self.results[task_id] = result
        self.wake(task_id)

    def wake(self, task_id: str) -> None:
        """The task changed: its waiters look again."""
        event = self._waiting.pop(task_id, None)
        if event is not None:
            event.set()

    @property
    def waited_for(self) -> int:
        """How many tasks have callers asleep on them (for tests and stats)."""
        return len(self._waiting)

    def forget(self, task_ids: tuple[str, ...]) -> None:
        """Drops the tasks (past ``tasks.done_retention_s``); their waiters wake to NotFound."""
        for task_id in task_ids:
            self.results.pop(task_id, None)
            self.submitted_at.pop(task_id, None)
            self.wake(task_id)

    async def follow(
        self, task_id: str, lifecycle: TaskLifecycle, node: str
    ) -> AsyncIterator[agent_pb2.TaskEvent]:
        """A task of this origin (``node``): its current state, then each change, ending with
        its result (a finished task's stream is its result alone). Current state rather than
        the whole history: a caller wants to know where its task is, and each message costs a
        send."""
        after = -1  # nothing sent yet: send the latest event only
        while True:
            result = self.results.get(task_id)
            if result is not None:
                yield result_event(task_id, result)
                return
            if task_id not in lifecycle:
                raise NotFound(
                    f"no task {quoted(task_id)} on {node} (unknown, or forgotten after "
                    "tasks.done_retention_s); check the id"
                )
            # Registered before anything is sent: a change while the send is under way must
            # wake this loop, not be missed.
            changed = self._waiting.get(task_id)
            if changed is None:
                changed = self._waiting[task_id] = asyncio.Event()
            events = lifecycle.events(task_id, max(after, 0))
            for e in events[-1:] if after < 0 else events:
                after = e.seq
                if not e.state.terminal:  # the terminal one is sent with the result
                    yield event_proto(e)
            await changed.wait()


async def wait_remote(
    members: PeerDirectory, channels: ChannelPool | None, node: str, task_id: str
) -> AsyncIterator[agent_pb2.TaskEvent]:
    """``Wait`` for a task of another origin: relayed from the node its id names."""
    origin = task_id.rsplit("-", 1)[0]
    member = None if len(task_id) > MAX_TASK_ID else members.member(origin)
    if member is None or not member.address:
        raise NotFound(
            f"no task {quoted(task_id)}: {quoted(origin)}, the node its id names, is not "
            "a known member; check the id"
        )
    from p2pagent._proto import agent_pb2_grpc

    if channels is None:
        raise Unavailable(f"{node} has no channels to reach {origin}")
    stub = agent_pb2_grpc.AgentServiceStub(channels.get(member.address))
    try:
        async for answer in stub.Wait(agent_pb2.WaitRequest(task_id=task_id)):
            yield answer.event
    except grpc.aio.AioRpcError as e:
        raise error_from_code(e.code().name, f"via {origin}: {e.details()}") from None

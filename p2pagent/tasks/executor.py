"""The executor role of a node: runs tasks from its queue on the inference engine and hands
each result back to the task's origin.

Up to ``capacity`` tasks run at once (the engine batches what runs together), and no more than
``tasks.run_ahead_s`` of estimated work is started ahead, so that queued tasks stay stealable.
A result for a task this node originated goes straight to the origin side; any other goes over
``Peer.Complete``, retried (:meth:`Executor.retry_unacked`, from the driver's ticker) until the
origin acknowledges it: the origin's lease table turns a repeat into a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from p2pagent._proto import common_pb2, peer_pb2, peer_pb2_grpc
from p2pagent.errors import NotFound, P2PAgentError
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.load import ServiceTimes
from p2pagent.tasks.queue import TaskQueue
from p2pagent.tasks.spec import Task
from p2pagent.tasks.wire import error_code

#: Tasks started whatever their estimates while a running task's model has only run batches
#: of one size: one running and two queued behind it, so the engine runs a batch of two and
#: measures what a row adds to a batch. With one (the rule otherwise) such a model whose
#: batches cost more than ``run_ahead_s`` / 2 only ever ran batches of one: its estimate
#: stayed the whole batch's cost, which kept the next tasks back (measured: 16 req/s at any
#: concurrency for a 60 ms-per-batch model that batches 32 rows in 80 ms).
EXPLORE_STARTED = 3

if TYPE_CHECKING:
    from p2pagent.inference.engine import InferenceEngine

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 5.0
#: Compute estimate for a model never run here yet.
DEFAULT_COST_S = 0.01


class Executor:
    """Runs the node's queue; one per node, owned by the tasks driver."""

    def __init__(
        self,
        name: str,
        cfg: TasksConfig,
        *,
        queue: TaskQueue,
        engine: InferenceEngine,
        capacity: int,
        prepare: Callable[[str, str], Awaitable[str]] | None,
        stub: Callable[[str], peer_pb2_grpc.PeerAsyncStub],
        on_started: Callable[[Task], None],
        on_local_result: Callable[[peer_pb2.CompleteRequest], Awaitable[object]],
        on_finished: Callable[[], None],
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.queue = queue
        self.capacity = max(1, capacity)
        self.service = ServiceTimes(cfg)
        self.completed = 0
        self._engine = engine
        #: Makes a model (and pinned version) loadable before a task runs, pulling it from peers
        #: when need be; returns the name the engine runs it under.
        self._prepare = prepare
        self._stub = stub
        self._on_started = on_started
        self._on_local_result = on_local_result
        #: Called after each task: the driver starts the next ones and reconsiders stealing.
        self._on_finished = on_finished
        self._running: dict[str, asyncio.Task[None]] = {}
        self._started: dict[str, Task] = {}  # each running task, for its estimate and model
        #: Inputs an Agent.Infer caller already decoded, used if its task runs here.
        self._decoded: dict[str, Any] = {}
        #: Results handed to a remote origin and not yet acknowledged: (task, attempt) -> ...
        self._unacked: dict[tuple[str, int], tuple[str, peer_pb2.CompleteRequest]] = {}
        self._calls: set[asyncio.Task[Any]] = set()

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def saturated(self) -> bool:
        """Twice ``capacity`` running: stealing more now would only queue it here."""
        return len(self._running) >= self.capacity * 2

    def estimate(self, model: str, inputs: Sequence[common_pb2.Tensor]) -> float:
        """Compute estimate of one task: what a row of ``model`` adds to an engine batch (the
        engine's measured marginal seconds per row) times the task's rows, so a big task
        weighs more than a small one (per-task times would count the wait for the rest of a
        batch, and a batch's fixed cost is shared); before the first batch, the EWMA of whole
        runs, else a default."""
        s_per_row = self._engine.marginal_seconds_per_row(model)
        if s_per_row:
            rows = inputs[0].shape[0] if inputs and inputs[0].shape else 1
            return s_per_row * max(1, rows)
        return self.service.estimate(model, DEFAULT_COST_S)

    def keep_decoded(self, task_id: str, inputs: Any) -> None:
        """Inputs of an inline task, already decoded and checked by its caller."""
        self._decoded[task_id] = inputs

    def drop_decoded(self, task_id: str) -> None:
        self._decoded.pop(task_id, None)

    def fill(self) -> None:
        """Starts queued tasks while there is room."""
        while len(self._running) < self.capacity and self._may_start_another():
            task = self.queue.pop_for_execution()
            if task is None:
                break
            self._start(task)

    def _may_start_another(self) -> bool:
        """Under ``run_ahead_s`` of estimated work, or fewer than EXPLORE_STARTED running while
        a running task's model has not shown what batching saves (one always runs)."""
        started = self._started.values()
        if not started or sum(t.est_cost_s for t in started) < self.cfg.run_ahead_s:
            return True
        return len(started) < EXPLORE_STARTED and not all(
            self._engine.batching_measured(t.model) for t in started
        )

    def _start(self, task: Task) -> None:
        # Counted as running before the origin's bookkeeping runs: it starts the queue again,
        # which must already see this one (or it starts past ``capacity``).
        self._running[task.task_id] = asyncio.create_task(self._execute(task))
        self._started[task.task_id] = task
        self._on_started(task)

    async def _execute(self, task: Task) -> None:
        from p2pagent.inference import tensors

        start = time.perf_counter()
        result = peer_pb2.CompleteRequest(
            task_id=task.task_id, executor=self.name, attempt=task.attempt
        )
        try:
            inputs = self._decoded.pop(task.task_id, None)
            if inputs is None:
                # Host views of the wire bytes, as Infer decodes: no torch on the event loop.
                inputs = tensors.many_decode(task.inputs or [], 1 << 28)  # type: ignore[arg-type]
            engine_name = task.model
            if self._prepare is not None:
                engine_name = await self._prepare(task.model, task.model_version)
            deadline = None
            if task.deadline:
                deadline = time.monotonic() + max(0.0, task.deadline - time.time())
            outputs = await self._engine.infer(engine_name, inputs, deadline)
            result.ok = True
            result.outputs.extend(tensors.many_to_proto(outputs))
        except P2PAgentError as e:
            result.ok = False
            result.error_code = error_code(e)
            result.error_message = str(e)
        except Exception as e:  # a bug in a model must fail the task, not the executor
            log.exception("task %s failed", task.task_id)
            result.ok = False
            result.error_code = "INTERNAL"
            result.error_message = f"{type(e).__name__}: {e}"
        result.compute_s = time.perf_counter() - start
        if result.ok:
            self.service.observe(task.model, result.compute_s)
        with contextlib.suppress(Exception):
            self.queue.finish(task.task_id)
        self._running.pop(task.task_id, None)
        self._started.pop(task.task_id, None)
        self.completed += 1
        await self.hand_back(task, result)
        self._on_finished()

    async def hand_back(self, task: Task, result: peer_pb2.CompleteRequest) -> None:
        """Gives ``result`` to the task's origin: here, or over ``Peer.Complete`` (retried)."""
        if task.origin == self.name:
            await self._on_local_result(result)
            return
        self._unacked[(task.task_id, task.attempt)] = (task.origin, result)
        self._spawn(self._send_complete(task.origin, result))

    @property
    def unacked(self) -> int:
        """Results handed back but not yet acknowledged by their origin."""
        return len(self._unacked)

    def retry_unacked(self) -> None:
        for origin, result in list(self._unacked.values()):
            self._spawn(self._send_complete(origin, result))

    async def _send_complete(self, origin: str, result: peer_pb2.CompleteRequest) -> None:
        try:
            await self._stub(origin).Complete(result, timeout=CALL_TIMEOUT_S)
        except (grpc.aio.AioRpcError, NotFound):
            return  # retried by the ticker until the origin answers
        self._unacked.pop((result.task_id, result.attempt), None)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def stop(self) -> None:
        pending = [*self._running.values(), *self._calls]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

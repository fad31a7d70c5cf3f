"""Running one task on the inference engine, for the asyncio adapter's ``StartRun`` effects.

Which task runs when is the core's decision (``tasks/core.py``); this module only turns a task
into a :class:`TaskResult`: decode its inputs (or take the ones an ``Agent.Infer`` caller
already decoded), make its model loadable (pulling it from peers when need be), run it with
its deadline, and say what went wrong in the error tree's words if it failed. It also keeps
the compute estimates new tasks are given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from p2pagent._proto import common_pb2
from p2pagent.errors import P2PAgentError
from p2pagent.tasks.admission import check_result
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.load import ServiceTimes
from p2pagent.tasks.results import TaskResult
from p2pagent.tasks.spec import Task
from p2pagent.tasks.wire import input_bytes

log = logging.getLogger(__name__)

#: Compute estimate for a model never run here yet.
DEFAULT_COST_S = 0.01


class Engine(Protocol):
    """What the scheduler needs of the inference engine."""

    def marginal_seconds_per_row(self, model: str) -> float | None: ...

    def marginal_seconds_per_token(self, model: str) -> float | None: ...

    def batching_measured(self, model: str) -> bool: ...

    def full_batch_s(self, model: str) -> float | None: ...

    async def infer(self, model: str, inputs: Any, deadline: float | None = None) -> Any: ...


class EngineRuns:
    """Runs tasks on ``engine``; ``prepare`` makes a model (and pinned version) loadable and
    returns the name the engine runs it under."""

    def __init__(
        self,
        name: str,
        cfg: TasksConfig,
        engine: Engine,
        prepare: Callable[[str, str], Awaitable[str]] | None = None,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.service = ServiceTimes(cfg)
        self.engine = engine
        self._prepare = prepare
        #: Inputs an Agent.Infer caller already decoded, used if its task runs here.
        self._decoded: dict[str, Any] = {}

    def estimate(self, model: str, inputs: Sequence[common_pb2.Tensor]) -> float:
        """Compute estimate of one task: what a row of ``model`` adds to an engine batch (the
        engine's measured marginal seconds per row) times the task's rows, so a big task
        weighs more than a small one (per-task times would count the wait for the rest of a
        batch, and a batch's fixed cost is shared); before the first batch, the EWMA of whole
        runs, else a default.

        A model with sequences (token ids, [rows, length]) is estimated by tokens instead:
        what a token adds to a batch times rows x length, since a transformer's cost follows
        tokens and 8 tokens and 512 are the same one row."""
        shape = list(inputs[0].shape) if inputs else []
        rows = max(1, shape[0]) if shape else 1
        if len(shape) >= 2:
            s_per_token = self.engine.marginal_seconds_per_token(model)
            if s_per_token:
                return s_per_token * rows * max(1, shape[1])
        s_per_row = self.engine.marginal_seconds_per_row(model)
        if s_per_row:
            return s_per_row * rows
        return self.service.estimate(model, DEFAULT_COST_S)

    def keep_decoded(self, task_id: str, inputs: Any) -> None:
        """Inputs of an inline task, already decoded and checked by its caller."""
        self._decoded[task_id] = inputs

    def drop_decoded(self, task_id: str) -> None:
        self._decoded.pop(task_id, None)

    async def run(self, task: Task, decoded: Any = None, prepared: bool = False) -> TaskResult:
        """Runs ``task`` (``decoded``: its inputs, already decoded by an Infer caller); a
        failure is a failed result, never an exception (but cancellation). ``prepared``: the
        caller found the model served here at its newest version, under its own name (what
        ``prepare`` would return at once): two coroutines per request spared."""
        # Not ``from ... import``: that form calls importlib's Python _handle_fromlist on
        # every request; this one is a sys.modules lookup once numpy is loaded.
        import p2pagent.inference.tensors as tensors

        start = time.perf_counter()
        try:
            inputs = decoded if decoded is not None else self._decoded.pop(task.task_id, None)
            if inputs is None:
                # Host views of the wire bytes, as Infer decodes: no torch on the event loop.
                inputs = tensors.many_decode(task.inputs or [], 1 << 28)  # type: ignore[arg-type]
            engine_name = task.model
            if self._prepare is not None and not prepared:
                engine_name = await self._prepare(task.model, task.model_version)
            deadline = None
            if task.deadline:
                deadline = time.monotonic() + max(0.0, task.deadline - time.time())
            outputs = await self.engine.infer(engine_name, inputs, deadline)
            compute_s = time.perf_counter() - start
            self.service.observe(task.model, compute_s)
            out = tuple(tensors.many_to_proto(outputs))
            # Bounded where it ran, in the same words on every node: the origin refuses a
            # Peer.Complete over the bound before decoding it.
            check_result(len(out), input_bytes(out), self.cfg)
            return TaskResult(task.task_id, task.attempt, self.name, True, out, compute_s=compute_s)
        except P2PAgentError as e:
            code, message = e.code, str(e)
        except Exception as e:  # a bug in a model must fail the task, not the node
            log.exception("task %s failed", task.task_id)
            code, message = "INTERNAL", f"{type(e).__name__}: {e}"
        elapsed = time.perf_counter() - start
        return TaskResult(task.task_id, task.attempt, self.name, False, (), code, message, elapsed)

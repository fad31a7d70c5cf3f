"""A task's result as the cores see it: who ran which attempt, and what came out.

Typed end to end: the executor makes one, the origin's lease table decides whether it is the
one result, and the driver journals and delivers it. The wire form (``peer.CompleteRequest``)
is made and read only in ``tasks/wire.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pagent._proto import common_pb2

#: Output tensors, passed through undecoded (the cores never look inside).
Outputs = tuple[common_pb2.Tensor, ...]


@dataclass(frozen=True)
class TaskResult:
    """The outcome of one attempt of a task on one executor."""

    task_id: str
    attempt: int
    executor: str
    ok: bool
    outputs: Outputs = ()
    #: For a failure: the status name (``errors.P2PAgentError.code``) and what went wrong.
    error_code: str = ""
    error_message: str = ""
    #: Seconds the executor computed (0 for failures decided without running).
    compute_s: float = 0.0


def failure(task_id: str, attempt: int, executor: str, code: str, message: str) -> TaskResult:
    """A failed result decided without running the task (a deadline, a give-up)."""
    return TaskResult(task_id, attempt, executor, False, (), code, message)

"""The task as the pure task cores see it: a frozen, protobuf-free mirror of ``TaskSpec``.

The driver converts ``peer_pb2.TaskSpec`` to and from this. The input tensors ride along as an
opaque ``inputs`` payload the cores never look at; what the cores need from them (their size,
for the cost of moving the task) is carried separately in ``input_bytes``.

Time: every ``now`` and ``deadline`` handed to the task cores is on one clock. The daemon uses
Unix seconds, because deadlines are absolute wall times that travel between nodes; the
simulator uses its virtual clock.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from p2pagent.errors import InvalidArgument, quoted

#: Longest task id a node makes (a node name of at most 63 characters, '-', 16 hex digits);
#: anything longer is no task of ours.
MAX_TASK_ID = 80


@dataclass(frozen=True)
class Task:
    """One unit of inference work."""

    task_id: str
    #: Node that accepted the task from a client, journals it and delivers its result.
    origin: str
    model: str
    #: Origin's estimate of the compute time on a speed-1.0 node, in seconds.
    est_cost_s: float
    #: Higher runs first.
    priority: int = 0
    #: Absolute time after which the task fails with DeadlineExceeded; 0 means none.
    deadline: float = 0.0
    #: Bumped by the origin each time it re-queues the task; results name the attempt.
    attempt: int = 0
    #: Pinned model manifest id; empty means latest.
    model_version: str = ""
    #: Total size of the inputs, for the cost of shipping the task to another node.
    input_bytes: int = 0
    #: Opaque input payload (tensors); never inspected by the cores.
    inputs: object = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.task_id or len(self.task_id) > MAX_TASK_ID:
            raise InvalidArgument(
                f"task id {quoted(self.task_id)} must be 1-{MAX_TASK_ID} characters"
            )
        if self.est_cost_s < 0 or self.input_bytes < 0 or self.attempt < 0:
            raise InvalidArgument(
                f"task {self.task_id}: est_cost_s, input_bytes and attempt must be >= 0"
            )
        if not (math.isfinite(self.est_cost_s) and math.isfinite(self.deadline)):
            raise InvalidArgument(f"task {self.task_id}: est_cost_s and deadline must be finite")

    def next_attempt(self) -> Task:
        """The same task, re-queued by its origin: results of older attempts are stale."""
        return dataclasses.replace(self, attempt=self.attempt + 1)

    def expired(self, now: float) -> bool:
        return self.deadline > 0 and now >= self.deadline

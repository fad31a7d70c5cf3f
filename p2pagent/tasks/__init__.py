"""Task lifecycle and work stealing: pure cores (queue, load, steal, leases, placement,
lifecycle); the asyncio driver and journal live beside them."""

from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.leases import (
    Action,
    Cancel,
    CompleteKind,
    CompleteOutcome,
    Deliver,
    LeaseTable,
    Location,
    Requeue,
)
from p2pagent.tasks.lifecycle import TaskEvent, TaskLifecycle, TaskState
from p2pagent.tasks.load import LoadBoard, LoadReport, ModelBacklog, ServiceTimes, make_report
from p2pagent.tasks.placement import PLACEMENTS, Placement, make_placement
from p2pagent.tasks.queue import EntryState, Expired, TaskQueue
from p2pagent.tasks.spec import Task
from p2pagent.tasks.steal import StealAttempt, StealPolicy

__all__ = [
    "PLACEMENTS",
    "Action",
    "Cancel",
    "CompleteKind",
    "CompleteOutcome",
    "Deliver",
    "EntryState",
    "Expired",
    "LeaseTable",
    "LoadBoard",
    "LoadReport",
    "Location",
    "ModelBacklog",
    "Placement",
    "Requeue",
    "ServiceTimes",
    "StealAttempt",
    "StealPolicy",
    "Task",
    "TaskEvent",
    "TaskLifecycle",
    "TaskQueue",
    "TaskState",
    "TasksConfig",
    "make_placement",
    "make_report",
]

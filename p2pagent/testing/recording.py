"""A scheduler core that records its inputs and outputs, for replay tests.

``RecordingTaskNode`` is a :class:`~p2pagent.tasks.core.TaskNode` whose every input (each
method that can change its state) is logged with its arguments and what it returned. Give it
to a driver (``TasksDriver(core_type=RecordingTaskNode, ...)``), run the driver for real, then
:func:`replay` the log into a fresh core built alike: a pure core returns the same effects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from p2pagent.tasks.core import TaskNode

#: The inputs of TaskNode: every public method but the read-only views.
INPUTS = (
    "submit", "restore_result", "fail", "on_complete", "on_journaled", "on_assign_result",
    "on_load_report", "on_member", "on_assign", "on_run_finished", "start_now",
    "on_now_finished", "on_now_finished_many", "on_now_journaled", "on_complete_ack",
    "on_hint", "on_steal_request", "on_steal_response", "tick", "report",
)  # fmt: skip


@dataclass(frozen=True)
class Call:
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    returned: Any


class RecordingTaskNode(TaskNode):
    """A TaskNode logging each input call to ``self.recorded``."""

    recorded: list[Call]

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name not in INPUTS:
            return attr
        recorded: list[Call] = super().__getattribute__("__dict__").setdefault("recorded", [])

        def record(*args: Any, **kwargs: Any) -> Any:
            returned = attr(*args, **kwargs)
            recorded.append(Call(name, args, kwargs, returned))
            return returned

        return record


def replay(calls: list[Call], core: TaskNode) -> list[tuple[Call, Any]]:
    """Feeds ``calls`` to ``core``; returns each call whose result differs, with the new one."""
    differ: list[tuple[Call, Any]] = []
    for call in calls:
        method: Callable[..., Any] = getattr(core, call.method)
        returned = method(*call.args, **call.kwargs)
        if returned != call.returned:
            differ.append((call, returned))
    return differ

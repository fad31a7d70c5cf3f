"""The victim's side of a steal, as a pure core shared by the daemon and the simulator.

Transactional: each task the queue offers leaves only once the victim's own lease table has
moved it to the thief; one the table refuses (finished, re-queued, another attempt) goes back
into the queue. So a task is never in two queues, and a running one is never offered
(``TaskQueue.take_for_steal``).
"""

from __future__ import annotations

from collections.abc import Collection

from p2pagent.tasks.leases import Action, LeaseTable
from p2pagent.tasks.queue import TaskQueue
from p2pagent.tasks.spec import Task


def hand_over(
    queue: TaskQueue,
    leases: LeaseTable,
    victim: str,
    thief: str,
    max_tasks: int,
    models: Collection[str],
    thief_speed: float,
    now: float,
    others_speed: float = 0.0,
) -> tuple[list[Task], list[Action]]:
    """The tasks granted to ``thief`` and the lease actions the moves produced;
    ``others_speed``: the summed speed of the other peers serving the work (its share)."""
    granted: list[Task] = []
    actions: list[Action] = []
    for t in queue.take_for_steal(max_tasks, list(models), thief_speed, now, others_speed):
        ok, moved = leases.on_stolen(t.task_id, t.attempt, victim, thief, now)
        if ok:
            granted.append(t)
            actions.extend(moved)
        else:
            queue.push(t, now)  # the lease table refused: keep it
    return granted, actions

"""The origin's lease table, example by example, with a fake clock (plain floats)."""

from __future__ import annotations

import pytest

from p2pagent.errors import AlreadyExists
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.leases import Action, Cancel, CompleteKind, Deliver, LeaseTable, Requeue
from p2pagent.tasks.lifecycle import TaskEvent, TaskState
from p2pagent.tasks.load import make_report
from p2pagent.tasks.spec import Task

CFG = TasksConfig(lease_s=10, handoff_grace_s=3, max_attempts=3, done_retention_s=100)


def table() -> LeaseTable:
    return LeaseTable("o", CFG)


def t(i: int = 0, **kw: object) -> Task:
    return Task(f"t{i}", "o", "m", 1.0, **kw)  # type: ignore[arg-type]


def of(actions: list[Action], kind: type) -> list:  # type: ignore[type-arg]
    return [a for a in actions if isinstance(a, kind)]


def report(node: str, held: list[Task], running: list[Task] = (), seq: int = 1):  # type: ignore[assignment, no-untyped-def]
    return make_report(node, seq, held, running, 1, 1.0, ["m"])


def test_local_run_delivers_once_and_acks_retries() -> None:
    lt = table()
    lt.submit(t(), 0)
    with pytest.raises(AlreadyExists):
        lt.submit(t(), 0)
    ev = of(lt.on_started("t0", 0, "o", 1), TaskEvent)
    assert ev[0].state is TaskState.RUNNING
    out = lt.on_complete("t0", 0, "o", True, 2, outputs="y")
    assert out.kind is CompleteKind.DELIVERED and out.accepted
    (d,) = of(out.actions, Deliver)
    assert d.ok and d.outputs == "y" and d.executor == "o"
    assert lt.lifecycle.state("t0") is TaskState.DONE
    again = lt.on_complete("t0", 0, "o", True, 3)
    assert again.kind is CompleteKind.RETRY and again.accepted and again.actions == []
    with pytest.raises(AlreadyExists):
        lt.submit(t(), 4)  # ids are not reused while remembered


def test_steal_moves_ownership_atomically() -> None:
    lt = table()
    lt.submit(t(), 0)
    ok, actions = lt.on_stolen("t0", 0, "o", "b", 1)
    assert ok and of(actions, TaskEvent)[0].node == "b"
    loc = lt.where("t0")
    assert loc is not None and loc.holder == "b" and loc.lease_until == 11
    # A second, racing steal of the same task from the old holder is refused.
    assert lt.on_stolen("t0", 0, "o", "c", 1) == (False, [])
    # So is a report naming the wrong attempt or a running task.
    assert not lt.on_stolen("t0", 1, "b", "c", 1)[0]
    lt.on_started("t0", 0, "b", 2)
    assert not lt.on_stolen("t0", 0, "b", "c", 2)[0]


def test_member_dead_requeues_with_next_attempt() -> None:
    lt = table()
    lt.submit(t(0), 0)
    lt.submit(t(1), 0)
    lt.on_stolen("t0", 0, "o", "b", 1)
    actions = lt.on_member_dead("b", 5)
    (r,) = of(actions, Requeue)
    assert r.task.task_id == "t0" and r.task.attempt == 1 and "dead" in r.reason
    assert of(actions, Cancel) == [Cancel("t0", 0, "b")]
    loc = lt.where("t0")
    assert loc is not None and loc.holder == "o" and loc.attempt == 1
    assert lt.on_member_dead("b", 6) == []


def test_result_of_falsely_suspected_executor_wins_if_first() -> None:
    lt = table()
    lt.submit(t(), 0)
    lt.on_stolen("t0", 0, "o", "b", 0)
    lt.on_member_dead("b", 5)  # b was only slow
    out = lt.on_complete("t0", 0, "b", True, 6, outputs="from b")
    assert out.kind is CompleteKind.DELIVERED
    assert of(out.actions, Cancel) == [Cancel("t0", 1, "o")]  # drop our re-queued copy
    late = lt.on_complete("t0", 1, "o", True, 7)
    assert late.kind is CompleteKind.DUPLICATE and not late.accepted


def test_failures_stale_retryable_and_final() -> None:
    lt = table()
    lt.submit(t(), 0)
    lt.on_stolen("t0", 0, "o", "b", 0)
    lt.on_member_dead("b", 1)  # attempt 1 is now at o
    stale = lt.on_complete("t0", 0, "b", False, 2, error_code="INTERNAL")
    assert stale.kind is CompleteKind.STALE and not stale.accepted
    lt.on_stolen("t0", 1, "o", "c", 3)
    retry = lt.on_complete("t0", 1, "c", False, 4, error_code="UNAVAILABLE")
    assert retry.kind is CompleteKind.REQUEUED and retry.accepted
    assert of(retry.actions, Requeue)[0].task.attempt == 2
    final = lt.on_complete(
        "t0", 2, "o", False, 5, error_code="INVALID_ARGUMENT", error_message="bad"
    )
    (d,) = of(final.actions, Deliver)
    assert not d.ok and d.result.error_code == "INVALID_ARGUMENT"
    assert lt.lifecycle.state("t0") is TaskState.FAILED


def test_gives_up_after_max_attempts() -> None:
    lt = table()
    lt.submit(t(), 0)
    for attempt, node in enumerate(["b", "c"]):
        lt.on_stolen("t0", attempt, "o", node, attempt)
        lt.on_member_dead(node, attempt + 0.5)
    lt.on_stolen("t0", 2, "o", "d", 3)
    (d,) = of(lt.on_member_dead("d", 4), Deliver)
    assert (
        not d.ok and d.result.error_code == "UNAVAILABLE" and "3 attempts" in d.result.error_message
    )
    assert lt.where("t0") is None and lt.is_done("t0")


def test_lease_expiry_and_renewals() -> None:
    lt = table()
    lt.submit(t(), 0)
    lt.on_stolen("t0", 0, "o", "b", 0)
    assert lt.next_deadline() == 10
    lt.renew_node("b", 8)
    assert lt.tick(17.9) == []
    lt.renew("t0", 0, "b", 15)
    lt.renew("t0", 0, "zz", 100)  # not the holder: ignored
    assert lt.tick(24.9) == []
    (r,) = of(lt.tick(25), Requeue)
    assert r.task.attempt == 1 and "expired" in r.reason
    assert lt.next_deadline() is None  # local: no lease


def test_reports_confirm_hand_over_or_catch_it_lost() -> None:
    lt = table()
    lt.submit(t(0), 0)
    lt.submit(t(1), 0)
    lt.on_stolen("t0", 0, "o", "b", 0)
    lt.on_stolen("t1", 0, "o", "b", 0)
    # b lists t0 (running) but t1 never arrived (the StealResponse was lost).
    actions = lt.on_report(report("b", [], [t(0)], seq=1), 1)
    assert [e.state for e in of(actions, TaskEvent)] == [TaskState.RUNNING]
    assert of(lt.on_report(report("b", [], [t(0)], seq=2), 2.9), Requeue) == []
    (r,) = of(lt.on_report(report("b", [], [t(0)], seq=3), 3.0), Requeue)
    assert r.task.task_id == "t1" and "does not hold" in r.reason
    loc = lt.where("t0")
    assert loc is not None and loc.lease_until == 13 and loc.running


def test_confirmed_task_missing_gets_grace_for_its_complete() -> None:
    lt = table()
    lt.submit(t(), 0)
    lt.on_stolen("t0", 0, "o", "b", 0)
    lt.on_report(report("b", [t()]), 1)
    assert lt.on_report(report("b", []), 2) == []  # finished: Complete still on the way
    assert lt.on_complete("t0", 0, "b", True, 3).kind is CompleteKind.DELIVERED
    assert lt.on_report(report("b", []), 10) == []


def test_deadline_of_a_remote_task() -> None:
    lt = table()
    lt.submit(t(deadline=5.0), 0)
    lt.on_stolen("t0", 0, "o", "b", 0)
    actions = lt.tick(5.0)
    (d,) = of(actions, Deliver)
    assert d.result.error_code == "DEADLINE_EXCEEDED" and "deadline" in d.result.error_message
    assert lt.on_complete("t0", 0, "b", True, 6).kind is CompleteKind.DUPLICATE


def test_local_failure_and_retention() -> None:
    lt = table()
    lt.submit(t(), 0)
    (d,) = of(lt.fail("t0", "DEADLINE_EXCEEDED", "late", 1), Deliver)
    assert d.executor == "o" and not d.ok
    assert lt.fail("t0", "X", "y", 2) == []
    lt.tick(50)
    assert lt.is_done("t0")
    lt.tick(102)
    assert not lt.is_done("t0") and "t0" not in lt.lifecycle
    assert lt.on_complete("t0", 0, "b", True, 103).kind is CompleteKind.UNKNOWN


def test_a_task_submitted_with_its_own_retention_is_forgotten_on_its_own_schedule() -> None:
    lt = table()
    lt.submit(t(0), 0, retain_s=5)  # an Infer call: only late duplicates need catching
    lt.submit(t(1), 0)
    for i in (0, 1):
        lt.on_started(f"t{i}", 0, "o", 1)
        assert lt.on_complete(f"t{i}", 0, "o", True, 2).accepted
    lt.tick(6)
    assert lt.is_done("t0") and lt.is_done("t1")
    lt.tick(8)
    assert not lt.is_done("t0") and "t0" not in lt.lifecycle
    assert lt.is_done("t1")  # the default retention (100 s)
    lt.tick(103)
    assert not lt.is_done("t1")


def test_assign_and_refusal() -> None:
    lt = table()
    lt.submit(t(), 0)
    lt.on_assigned("t0", 0, "b", 0)
    assert lt.held_by("b") == ["t0"]
    assert lt.on_assign_failed("t0", 0, "c", 1) == []  # not c's
    (r,) = of(lt.on_assign_failed("t0", 0, "b", 1), Requeue)
    assert r.task.attempt == 1 and lt.held_by("o") == ["t0"]

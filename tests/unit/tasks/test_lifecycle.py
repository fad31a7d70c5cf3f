"""Task lifecycle: allowed moves, final states, resumable event streams."""

from __future__ import annotations

import pytest

from p2pagent.errors import FailedPrecondition, NotFound
from p2pagent.tasks.lifecycle import TaskLifecycle, TaskState


def test_happy_path_and_resume() -> None:
    lc = TaskLifecycle()
    e1 = lc.record("t", TaskState.QUEUED, "a", 0, 0.0)
    assert e1 is not None
    assert lc.record("t", TaskState.QUEUED, "a", 0, 0.1) is None  # nothing changed
    lc.record("t", TaskState.QUEUED, "b", 0, 0.2)  # stolen by b
    lc.record("t", TaskState.RUNNING, "b", 0, 0.3)
    lc.record("t", TaskState.QUEUED, "a", 1, 0.4)  # b died: re-queued
    lc.record("t", TaskState.RUNNING, "a", 1, 0.5)
    done = lc.record("t", TaskState.DONE, "a", 1, 0.6)
    assert done is not None and lc.state("t") is TaskState.DONE and TaskState.DONE.terminal
    states = [e.state for e in lc.events("t", after_seq=e1.seq)]
    assert states[-1] is TaskState.DONE and len(states) == 5
    assert lc.events("t", after_seq=done.seq) == []


def test_terminal_is_final() -> None:
    lc = TaskLifecycle()
    lc.record("t", TaskState.QUEUED, "a", 0, 0.0)
    lc.record("t", TaskState.FAILED, "a", 0, 0.1, "DEADLINE_EXCEEDED", "late")
    for state in TaskState:
        with pytest.raises(FailedPrecondition):
            lc.record("t", state, "b", 1, 0.2)
    assert lc.last("t").error_code == "DEADLINE_EXCEEDED"


def test_must_start_queued_and_unknown_ids() -> None:
    lc = TaskLifecycle()
    with pytest.raises(FailedPrecondition):
        lc.record("t", TaskState.RUNNING, "a", 0, 0.0)
    with pytest.raises(NotFound):
        lc.events("nope")
    with pytest.raises(NotFound):
        lc.last("nope")
    assert lc.state("nope") is None

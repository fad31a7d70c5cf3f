"""Load model: EWMA service times, backlog, reports and the board of peers' reports."""

from __future__ import annotations

import pytest

from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.load import LoadBoard, ServiceTimes, backlog_s, ewma, make_report
from p2pagent.tasks.spec import Task


def test_ewma() -> None:
    assert ewma(None, 3.0, 0.2) == 3.0
    assert ewma(3.0, 1.0, 0.5) == 2.0


def test_service_times_are_normalised_to_speed_one() -> None:
    st = ServiceTimes(TasksConfig(ewma_alpha=0.5), speed=0.5)
    st.observe("m", 2.0)  # 2 s on a half-speed node is 1 s of speed-1.0 work
    assert st.estimate("m", 9.0) == 1.0
    st.observe("m", 4.0)
    assert st.estimate("m", 9.0) == 1.5
    assert st.estimate("other", 9.0) == 9.0
    assert st.cost_of(Task("t", "a", "other", 7.0)) == 7.0


def test_report_backlog() -> None:
    queued = [Task(f"q{i}", "a", "m", 1.0) for i in range(3)] + [Task("f", "b", "x", 2.0)]
    running = [Task("r", "b", "m", 2.0)]
    r = make_report("a", 1, queued, running, capacity=2, speed=0.5, models=["m", "x"])
    # (3 + 2 + half of the running 2) / (2 slots * 0.5 speed)
    assert r.backlog_s == pytest.approx(6.0)
    assert backlog_s(6.0, 2, 0.5) == 6.0
    assert (r.queue_len, r.running) == (4, 1)
    assert [(m.model, m.count, m.cost_s) for m in r.queued] == [("m", 3, 3.0), ("x", 1, 2.0)]
    assert r.held == {"f", "r"} and r.running_ids == {"r"}


def test_board_keeps_newest_and_drops_stale() -> None:
    board = LoadBoard(TasksConfig(report_max_age_s=5))
    old = make_report("b", 2, [], [], 1, 1.0, [])
    assert board.update(old, now=0)
    assert not board.update(make_report("b", 1, [], [], 1, 1.0, []), now=1)
    assert board.get("b") == old
    assert board.fresh(5) == [old] and board.fresh(5.1) == []
    board.forget("b")
    assert board.get("b") is None


def test_report_advertises_only_stealable_work() -> None:
    queued = [Task("a1", "a", "m", 1.0), Task("b1", "b", "m", 1.0)]
    r = make_report("a", 1, queued, [], 1, 1.0, ["m"], stealable=queued[:1])
    assert r.queue_len == 2 and r.backlog_s == 2.0
    assert [(m.model, m.count) for m in r.queued] == [("m", 1)]


def test_board_latest_keeps_a_quiet_peers_report_until_it_is_forgotten() -> None:
    board = LoadBoard(TasksConfig(report_max_age_s=5))
    board.update(make_report("b", 1, [], [], 1, 1.0, ["m"]), now=0)
    board.update(make_report("c", 1, [], [], 1, 1.0, ["n"]), now=100)
    assert [r.node for r in board.fresh(101)] == ["c"]  # b's report is too old to steal on
    assert [set(r.models) for r in board.latest()] == [{"m"}, {"n"}]  # but b still serves m
    board.forget("b")
    assert [r.node for r in board.latest()] == ["c"]

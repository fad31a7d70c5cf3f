"""Thief-side steal policy: when, whom (power of two choices), how many, and back-off."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.load import LoadReport, ModelBacklog
from p2pagent.tasks.steal import StealPolicy, backoff_delay, batch_size, pull_pays_off

CFG = TasksConfig(
    steal_low_water_s=0.05,
    steal_batch_s=0.2,
    min_victim_backlog_s=0.05,
    steal_backoff_base_s=0.1,
    steal_backoff_max_s=1.0,
    steal_timeout_s=2.0,
)


def peer(name: str, n: int, cost: float = 0.02, model: str = "m", seq: int = 1) -> LoadReport:
    return LoadReport(
        node=name,
        seq=seq,
        backlog_s=n * cost,
        queue_len=n,
        running=0,
        capacity=1,
        speed=1.0,
        models=frozenset({model}),
        queued=(ModelBacklog(model, n, n * cost),) if n else (),
    )


def policy(seed: int = 1, speed: float = 1.0) -> StealPolicy:
    return StealPolicy("me", random.Random(seed), CFG, speed)


def test_no_steal_while_enough_work_is_queued() -> None:
    p = policy()
    assert p.decide(0, queued_work_s=0.05, serve_models={"m"}, peers=[peer("a", 100)]) is None
    attempt = p.decide(0, queued_work_s=0.01, serve_models={"m"}, peers=[peer("a", 100)])
    assert attempt is not None and attempt.victim == "a"
    assert attempt.models == ("m",) and attempt.thief_speed == 1.0
    assert attempt.max_tasks == 10  # 0.2 s of 0.02 s tasks


def test_two_choices_pick_the_busier() -> None:
    p = policy()
    for t in range(20):
        a = p.decide(t, 0, {"m"}, [peer("a", 10), peer("b", 100)])
        assert a is not None and a.victim == "b"
        p.on_steal_result("b", 3, t)


def test_two_choices_spread_over_many_victims() -> None:
    p = policy(seed=7)
    peers = [peer(f"p{i}", 10 + i) for i in range(10)]
    seen: Counter[str] = Counter()
    for t in range(400):
        a = p.decide(t, 0, {"m"}, peers)
        assert a is not None
        seen[a.victim] += 1
        p.on_steal_result(a.victim, 1, t)
    assert seen["p0"] == 0  # never the least loaded of a pair
    assert seen["p9"] > seen["p5"] > seen["p1"]  # skewed towards the busiest
    assert seen["p9"] < 400 * 0.4  # but not a herd on one victim


def test_ineligible_victims() -> None:
    p = policy()
    tiny = peer("tiny", 1)  # 0.02 s backlog: below min_victim_backlog_s
    other_model = peer("other", 100, model="x")
    itself = peer("me", 100)
    assert p.decide(0, 0, {"m"}, [tiny, other_model, itself]) is None


def test_pull_only_when_tasks_pay_for_it() -> None:
    p = policy()
    long_x = peer("long", 10, cost=10.0, model="x")
    short_x = peer("short", 100, cost=0.5, model="x")
    assert pull_pays_off(10.0, 1.0, 2.0, 4.0) and not pull_pays_off(0.5, 1.0, 2.0, 4.0)
    assert p.decide(0, 0, {"m"}, [short_x], pull_cost_s={"x": 2.0}) is None
    a = p.decide(0, 0, {"m"}, [short_x, long_x], pull_cost_s={"x": 2.0})
    assert a is not None and a.victim == "long" and a.models == ("x",) and a.max_tasks == 1


def test_one_steal_in_flight_and_timeout_counts_as_failure() -> None:
    p = policy()
    peers = [peer("a", 100)]
    assert p.decide(0, 0, {"m"}, peers) is not None
    assert p.in_flight == "a"
    assert p.decide(1.0, 0, {"m"}, peers) is None
    assert p.next_wakeup() == 2.0
    # At 2.0 the steal times out: a failure with back-off, so no new steal yet.
    assert p.decide(2.0, 0, {"m"}, peers) is None
    assert p.failures == 1 and p.in_flight is None
    assert 2.05 <= p.not_before <= 2.1


def test_backoff_grows_capped_and_resets() -> None:
    p = policy()
    peers = [peer("a", 100)]
    now = 0.0
    delays = []
    for _ in range(8):
        a = p.decide(now, 0, {"m"}, peers)
        assert a is not None
        p.on_steal_result("a", 0, now)
        delays.append(p.not_before - now)
        assert p.decide(now, 0, {"m"}, peers) is None  # backing off
        now = p.not_before
    assert delays[0] <= 0.1 and delays[3] >= 0.4 and max(delays) <= 1.0
    assert p.empty == 8
    assert p.decide(now, 0, {"m"}, peers) is not None
    p.on_steal_result("a", 5, now)
    assert p.failures == 0 and p.decide(now, 0, {"m"}, peers) is not None


def test_formulas() -> None:
    rng = random.Random(0)
    assert backoff_delay(0, CFG, rng) == 0
    assert 0.05 <= backoff_delay(1, CFG, rng) <= 0.1
    assert 0.5 <= backoff_delay(50, CFG, rng) <= 1.0
    assert batch_size(0.02, 1.0, CFG) == 10
    assert batch_size(0.02, 0.5, CFG) == 5
    assert batch_size(100.0, 1.0, CFG) == 1
    assert batch_size(1e-6, 1.0, CFG) == CFG.steal_max_tasks
    assert batch_size(0.0, 1.0, CFG) == CFG.steal_max_tasks


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_thief_speed_is_sent(speed: float) -> None:
    a = policy(speed=speed).decide(0, 0, {"m"}, [peer("a", 1000)])
    assert a is not None and a.thief_speed == speed


def test_member_dead_ends_the_wait_without_penalty() -> None:
    p = policy()
    assert p.decide(0, 0, {"m"}, [peer("a", 100), peer("b", 100)]) is not None
    victim = p.in_flight
    assert victim is not None
    p.on_member_dead("zz")
    assert p.in_flight == victim
    p.on_member_dead(victim)
    assert p.in_flight is None and p.failures == 0

"""The batching policy, pure, driven by a fake clock."""

from __future__ import annotations

import pytest

from p2pagent.errors import InvalidArgument, ResourceExhausted
from p2pagent.inference.batching import BatchPolicy
from p2pagent.inference.config import InferenceConfig


def policy(**kw: object) -> BatchPolicy:
    defaults: dict[str, object] = {"max_batch_size": 8, "max_queue_delay_s": 0.002}
    defaults.update(kw)
    return BatchPolicy(InferenceConfig(**defaults))  # type: ignore[arg-type]


def test_idle_device_dispatches_a_lone_request_at_once() -> None:
    p = policy()
    rid = p.submit("m", 1, now=10.0)
    d = p.poll(10.0)
    assert [b.request_ids for b in d.batches] == [(rid,)]
    assert d.batches[0].formed_at == 10.0  # zero added delay
    assert d.wake_at is None


def test_burst_while_busy_forms_full_batches_in_arrival_order() -> None:
    p = policy(max_batch_size=4)
    first = p.submit("m", 1, now=0.0)
    (running,) = p.poll(0.0).batches
    assert running.request_ids == (first,)
    ids = [p.submit("m", 1, now=0.001 * i) for i in range(10)]
    assert p.poll(0.01).batches == ()  # device busy: requests accumulate
    p.on_batch_done(running.batch_id, 0.005)
    sizes = []
    while p.queued:
        (b,) = p.poll(0.02).batches
        sizes.append(b.rows)
        assert list(b.request_ids) == ids[: b.rows]
        ids = ids[b.rows :]
        p.on_batch_done(b.batch_id, 0.005)
    assert sizes == [4, 4, 2]


def test_rows_count_towards_the_batch_size_and_a_big_request_goes_alone() -> None:
    p = policy(max_batch_size=8)
    p.submit("m", 1, now=0.0)
    (b0,) = p.poll(0.0).batches
    a = p.submit("m", 5, now=0.0)
    b = p.submit("m", 4, now=0.0)
    big = p.submit("m", 20, now=0.0)
    p.on_batch_done(b0.batch_id, 0.001)
    (x,) = p.poll(0.0).batches
    assert x.request_ids == (a,) and x.rows == 5  # 5 + 4 > 8
    p.on_batch_done(x.batch_id, 0.001)
    (y,) = p.poll(0.0).batches
    assert y.request_ids == (b,)  # 4 + 20 > 8
    p.on_batch_done(y.batch_id, 0.001)
    (z,) = p.poll(0.0).batches
    assert z.request_ids == (big,) and z.rows == 20


def test_different_groups_never_share_a_batch() -> None:
    p = policy()
    p.submit("m", 1, now=0.0, group="busy")
    (b0,) = p.poll(0.0).batches
    a1 = p.submit("m", 1, now=0.1, group=("f32", (3,)))
    b1 = p.submit("m", 1, now=0.2, group=("f32", (4,)))
    a2 = p.submit("m", 1, now=0.3, group=("f32", (3,)))
    p.on_batch_done(b0.batch_id, 0.001)
    (x,) = p.poll(0.4).batches
    assert x.request_ids == (a1, a2)  # the group with the oldest request goes first
    p.on_batch_done(x.batch_id, 0.001)
    (y,) = p.poll(0.4).batches
    assert y.request_ids == (b1,)


def test_unbatchable_requests_run_alone() -> None:
    p = policy()
    p.submit("m", 1, now=0.0, batchable=False)
    p.submit("m", 1, now=0.0, batchable=False)
    (x,) = p.poll(0.0).batches
    assert len(x.requests) == 1


def test_max_queue_delay_bounds_staging_behind_a_running_batch() -> None:
    p = policy(pipeline_depth=2, max_batch_size=4, max_queue_delay_s=0.002)
    p.submit("m", 1, now=0.0)
    (running,) = p.poll(0.0).batches
    r = p.submit("m", 1, now=0.001)
    d = p.poll(0.001)
    assert d.batches == ()  # a slot is free but the batch is neither full nor old
    assert d.wake_at == pytest.approx(0.003)
    (staged,) = p.poll(0.003).batches
    assert staged.request_ids == (r,)
    assert p.in_flight == 2
    p.on_batch_done(running.batch_id, 0.004)


def test_a_full_batch_is_staged_at_once() -> None:
    p = policy(pipeline_depth=2, max_batch_size=3)
    p.submit("m", 1, now=0.0)
    p.poll(0.0)
    for _ in range(3):
        p.submit("m", 1, now=0.001)
    (staged,) = p.poll(0.001).batches
    assert staged.rows == 3


def test_expired_requests_are_dropped_before_compute() -> None:
    p = policy()
    p.submit("m", 1, now=0.0)
    (running,) = p.poll(0.0).batches
    late = p.submit("m", 1, now=0.0, deadline=0.5)
    ok = p.submit("m", 1, now=0.0, deadline=5.0)
    d = p.poll(0.1)
    assert d.wake_at == 0.5  # the driver must come back to fail it on time
    d = p.poll(0.5)
    assert [e.request_id for e in d.expired] == [late]
    p.on_batch_done(running.batch_id, 0.6)
    (b,) = p.poll(0.6).batches
    assert b.request_ids == (ok,)
    assert p.stats()["m"].expired == 1


def test_cancelled_requests_leave_the_queue() -> None:
    p = policy()
    p.submit("m", 1, now=0.0)
    (running,) = p.poll(0.0).batches
    gone = p.submit("m", 1, now=0.0)
    kept = p.submit("m", 1, now=0.0)
    assert p.cancel(gone) and not p.cancel(gone)
    p.on_batch_done(running.batch_id, 0.001)
    (b,) = p.poll(0.0).batches
    assert b.request_ids == (kept,)


def test_bounded_queue_refuses_with_resource_exhausted() -> None:
    p = policy(max_queued=3)
    for _ in range(3):
        p.submit("m", 1, now=0.0)
    with pytest.raises(ResourceExhausted, match="queue is full"):
        p.submit("m", 1, now=0.0)
    assert p.stats()["m"].rejected == 1
    p.poll(0.0)  # one batch leaves the queue
    p.submit("m", 1, now=0.0)


def test_rows_must_be_positive() -> None:
    with pytest.raises(InvalidArgument):
        policy().submit("m", 0, now=0.0)


def test_slow_model_gets_its_share_not_all_of_the_device() -> None:
    """Model 'slow' takes 10x longer per batch; both keep a backlog of work queued."""
    p = policy(max_batch_size=1)
    cost = {"slow": 0.010, "fast": 0.001}
    for _ in range(200):
        p.submit("slow", 1, now=0.0)
    for _ in range(200):
        p.submit("fast", 1, now=0.0)
    now, device_time = 0.0, {"slow": 0.0, "fast": 0.0}
    runs = {"slow": 0, "fast": 0}
    for _ in range(100):
        (b,) = p.poll(now).batches
        now += cost[b.model]
        device_time[b.model] += cost[b.model]
        runs[b.model] += 1
        p.on_batch_done(b.batch_id, cost[b.model])
    # Equal device time, so about 10 fast batches per slow one, and both make progress.
    assert runs["slow"] >= 5 and runs["fast"] >= 50
    assert abs(device_time["slow"] - device_time["fast"]) <= 0.011


def test_a_newly_active_model_shares_the_device_from_the_start() -> None:
    """It neither waits behind the other model's history nor runs on banked credit."""
    p = policy(max_batch_size=1)
    for _ in range(50):
        p.submit("old", 1, now=0.0)
    for _ in range(20):
        (b,) = p.poll(0.0).batches
        p.on_batch_done(b.batch_id, 0.01)
    for _ in range(5):
        p.submit("new", 1, now=0.0)
    order = []
    for _ in range(10):
        (b,) = p.poll(0.0).batches
        order.append(b.model)
        p.on_batch_done(b.batch_id, 0.01)
    assert order == ["old", "new"] * 5


def test_stats_and_backlog_estimate() -> None:
    p = policy(max_batch_size=4)
    for _ in range(4):
        p.submit("m", 1, now=0.0)
    (b,) = p.poll(0.0).batches
    p.on_batch_done(b.batch_id, 0.004)
    s = p.stats()["m"]
    assert (s.batches, s.items, s.rows, s.mean_batch_size) == (1, 4, 4, 4.0)
    assert s.s_per_row == pytest.approx(0.001)
    for _ in range(3):
        p.submit("m", 1, now=0.0)
    assert p.estimated_backlog_s() == pytest.approx(0.003)
    (b,) = p.poll(0.0).batches
    p.on_batch_done(b.batch_id, 1.0, ok=False)
    assert p.stats()["m"].failed_batches == 1
    assert p.stats()["m"].s_per_row == pytest.approx(0.001)  # failures do not count

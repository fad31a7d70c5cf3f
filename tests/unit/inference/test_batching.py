"""The batching policy, pure, driven by a fake clock."""

from __future__ import annotations

import heapq

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


def test_a_partial_batch_waits_for_the_device_instead_of_staging_early() -> None:
    """Rule 3: behind a running batch only a full batch is staged; a partial one could not
    run sooner, so it waits and takes the rows that arrive meanwhile."""
    p = policy(pipeline_depth=2, max_batch_size=4, max_queue_delay_s=0.002)
    p.submit("m", 1, now=0.0)
    (running,) = p.poll(0.0).batches
    first = p.submit("m", 1, now=0.001)
    d = p.poll(0.001)
    assert d.batches == ()
    assert d.wake_at is None  # nothing to time: the batch's end is an event
    assert p.poll(0.050).batches == ()  # long past max_queue_delay_s: still not staged
    second = p.submit("m", 1, now=0.051)
    p.on_batch_done(running.batch_id, 0.060)
    (nxt,) = p.poll(0.060).batches
    assert nxt.request_ids == (first, second)


def test_the_model_worker_is_handed_a_half_full_batch_while_one_runs_there() -> None:
    """Rule 3, model worker: a next batch at least half full goes while one runs (it waits
    in the worker's socket), up to worker_pipeline_depth; a smaller one waits, and once
    the pipeline is full everything waits for a batch to end."""
    p = policy(max_batch_size=4, worker_pipeline_depth=2)
    a = p.submit("w", 1, now=0.0, worker=True)
    (first,) = p.poll(0.0).batches
    b = p.submit("w", 1, now=0.001, worker=True)
    assert p.poll(0.001).batches == ()  # a quarter of a batch: not worth a handover
    c = p.submit("w", 1, now=0.002, worker=True)
    (second,) = p.poll(0.002).batches  # half full: handed over behind the first
    assert (first.request_ids, second.request_ids) == ((a,), (b, c))
    d = p.submit("w", 2, now=0.003, worker=True)
    assert p.poll(0.003).batches == ()  # two in the worker: the pipeline is full
    p.on_batch_done(first.batch_id, 0.004, now=0.004)
    (third,) = p.poll(0.004).batches
    assert third.request_ids == (d,)


def test_one_batch_at_a_time_in_the_worker_at_depth_one() -> None:
    p = policy(max_batch_size=4, worker_pipeline_depth=1)
    p.submit("w", 1, now=0.0, worker=True)
    (running,) = p.poll(0.0).batches
    p.submit("w", 4, now=0.001, worker=True)
    assert p.poll(0.001).batches == ()  # even a full one waits
    p.on_batch_done(running.batch_id, 0.002, now=0.002)
    assert len(p.poll(0.002).batches) == 1


def test_a_batch_in_the_worker_does_not_hold_up_a_model_of_this_process() -> None:
    """The worker and this process's device are separate pipelines."""
    p = policy(max_batch_size=4, pipeline_depth=1)
    p.submit("w", 1, now=0.0, worker=True)
    (in_worker,) = p.poll(0.0).batches
    local = p.submit("m", 1, now=0.001)
    (b,) = p.poll(0.001).batches
    assert b.request_ids == (local,) and in_worker.model == "w"
    assert p.in_flight == 2
    p.submit("m", 1, now=0.002)
    assert p.poll(0.002).batches == ()  # this process's pipeline (depth 1) is busy


def test_worker_pipeline_depth_is_checked() -> None:
    from p2pagent.errors import ConfigError

    with pytest.raises(ConfigError, match="worker_pipeline_depth must be 0 \\(auto\\), 1 or 2"):
        InferenceConfig(worker_pipeline_depth=3).validate()


def closed_loop_cycle(
    p: BatchPolicy, t: float, rows: int, service_s: float, gap_s: float
) -> tuple[float, list[int]]:
    """A batch of ``rows`` one-row requests from ``t`` to ``t + service_s``; its callers
    send again ``gap_s`` apart after it finishes. Returns (clock, batch sizes dispatched
    while they came back)."""
    for _ in range(rows):
        p.submit("m", 1, now=t)
    (b,) = p.poll(t).batches
    assert b.rows == rows
    t += service_s
    p.on_batch_done(b.batch_id, service_s, now=t)
    sizes: list[int] = []
    for _ in range(rows):
        t += gap_s
        p.submit("m", 1, now=t)
        for batch in p.poll(t).batches:
            sizes.append(batch.rows)
            p.on_batch_done(batch.batch_id, 0.0, now=t)  # not counted: sizes only
    return t, sizes


def learn(p: BatchPolicy, fixed_s: float, per_row_s: float, gap_s: float) -> float:
    """Batches of 1 and 4 rows (cost fixed + rows * per_row), callers back ``gap_s`` apart."""
    t = 0.0
    for rows in (1, 4, 1, 4):
        t += 1.0
        for _ in range(rows):
            p.submit("m", 1, now=t)
        (b,) = p.poll(t).batches
        service = fixed_s + rows * per_row_s
        p.on_batch_done(b.batch_id, service, now=t + service)
        for i in range(rows):  # they come back (dispatched alone: not measured here)
            rid = p.submit("m", 1, now=t + service + (i + 1) * gap_s)
            p.cancel(rid)
    return t + 1.0


def test_refill_window_holds_a_partial_batch_for_fast_returning_callers() -> None:
    """Rule 2: callers that came back quickly before (a closed loop on a fast host) are
    waited for: the first back does not go alone, the batch leaves once all are back."""
    p = policy(max_batch_size=8, max_queue_delay_s=0.010)
    t = learn(p, fixed_s=0.010, per_row_s=0.001, gap_s=0.0002)
    for _ in range(4):
        p.submit("m", 1, now=t)
    (b,) = p.poll(t).batches
    p.on_batch_done(b.batch_id, 0.014, now=t + 0.014)
    t += 0.014
    back = [p.submit("m", 1, now=t + 0.0002 * (i + 1)) for i in range(3)]
    d = p.poll(t + 0.0006)
    assert d.batches == ()
    assert d.wake_at is not None and t < d.wake_at <= t + 0.010
    back.append(p.submit("m", 1, now=t + 0.0008))
    (b,) = p.poll(t + 0.0008).batches  # all four are back: no need to wait longer
    assert b.request_ids == tuple(back)


def test_refill_window_ends_and_the_partial_batch_goes() -> None:
    p = policy(max_batch_size=8, max_queue_delay_s=0.010)
    t = learn(p, fixed_s=0.010, per_row_s=0.001, gap_s=0.0002)
    for _ in range(4):
        p.submit("m", 1, now=t)
    (b,) = p.poll(t).batches
    t += 0.014
    p.on_batch_done(b.batch_id, 0.014, now=t)
    rid = p.submit("m", 1, now=t + 0.0001)
    wake = p.poll(t + 0.0001).wake_at
    assert wake is not None and wake <= t + 1.5 * 0.0008 + 1e-9  # 1.5x the return time
    assert p.poll(wake - 1e-6).batches == ()
    (b,) = p.poll(wake).batches
    assert b.request_ids == (rid,)


def test_no_hold_where_callers_return_slower_than_half_the_fixed_cost() -> None:
    """On a host whose loop returns rows slowly, the first back runs while others arrive."""
    p = policy(max_batch_size=8, max_queue_delay_s=0.010)
    t = learn(p, fixed_s=0.008, per_row_s=0.001, gap_s=0.002)  # 4 rows back in 8 ms
    _, sizes = closed_loop_cycle(p, t, 4, 0.012, 0.002)
    assert sizes == [1, 1, 1, 1]


def test_no_hold_without_a_fixed_cost_or_after_a_lone_request() -> None:
    # Cost proportional to rows: batching gains nothing, so nothing waits.
    p = policy(max_batch_size=8, max_queue_delay_s=0.010)
    t = learn(p, fixed_s=0.0, per_row_s=0.001, gap_s=0.0001)
    _, sizes = closed_loop_cycle(p, t, 4, 0.004, 0.0001)
    assert sizes == [1, 1, 1, 1]
    # Light traffic: the batch that finished was one request, so the next goes at once.
    q = policy(max_batch_size=8, max_queue_delay_s=0.010)
    t = learn(q, fixed_s=0.010, per_row_s=0.001, gap_s=0.0001)
    _, sizes = closed_loop_cycle(q, t, 1, 0.011, 0.0001)
    assert sizes == [1]


def closed_loop(
    p: BatchPolicy,
    clients: int,
    batches: int,
    fixed_s: float,
    per_row_s: float,
    gap_s: float,
    handoff_s: float = 0.0,
) -> list[int]:
    """Event-driven closed loop on one device: a batch of r rows takes fixed + r * per_row;
    the k-th answer of a batch is back as a new request k * gap_s after the batch ends.
    ``handoff_s``: what a batch costs besides its forward pass (the hand-off to the model
    worker), in the time from dispatch to result but not in the service time reported.
    Returns the sizes of the first ``batches`` batches."""
    events: list[tuple[float, int, str, int]] = []  # (time, seq, kind, batch id or 0)
    seq = 0

    def at(t: float, kind: str, bid: int = 0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, bid))

    sizes: list[int] = []
    running: dict[int, int] = {}

    def pump(now: float) -> None:
        d = p.poll(now)
        for b in d.batches:
            sizes.append(b.rows)
            running[b.batch_id] = b.rows
            at(now + handoff_s + fixed_s + b.rows * per_row_s, "done", b.batch_id)
        if d.wake_at is not None:
            at(d.wake_at, "wake")

    for _ in range(clients):
        at(0.0, "submit")
    while events and len(sizes) < batches:
        now, _, kind, bid = heapq.heappop(events)
        if kind == "submit":
            p.submit("m", 1, now=now)
        elif kind == "done":
            rows = running.pop(bid)
            p.on_batch_done(bid, fixed_s + rows * per_row_s, now=now)
            for k in range(rows):
                at(now + (k + 1) * gap_s, "submit")
        pump(now)
    # Drain: what runs and what is queued finishes, and nobody sends again.
    later = now + 1.0
    while True:
        for bid in list(running):
            p.on_batch_done(bid, fixed_s + running.pop(bid) * per_row_s)
        drained = p.poll(later).batches
        if not drained:
            return sizes
        running.update((b.batch_id, b.rows) for b in drained)


def test_closed_loop_batches_stay_whole_with_the_refill_window() -> None:
    """Answers back 0.1 ms apart, 10 ms of fixed cost: after a few batches to measure the
    line and the return time, every batch is whole (without the window: 1 and 7)."""
    p = policy(max_batch_size=8, max_queue_delay_s=0.010)
    sizes = closed_loop(p, 8, 30, fixed_s=0.010, per_row_s=0.001, gap_s=0.0001)
    assert sizes[-10:] == [8] * 10


def test_closed_loop_where_answers_return_slowly_is_not_held() -> None:
    """Answers back 1 ms apart (8 ms for a batch), 10 ms of fixed cost: holding would cost
    most of what it saves, so the first back goes at once, as without the window."""
    p = policy(max_batch_size=8, max_queue_delay_s=0.010)
    sizes = closed_loop(p, 8, 30, fixed_s=0.010, per_row_s=0.001, gap_s=0.001)
    assert 1 in sizes[-10:]


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


def test_no_hold_that_max_queue_delay_would_cut_short() -> None:
    """Answers back over 16 ms, 100 ms of fixed cost, but at most 10 ms of waiting allowed: a
    hold would end before they are back, idling the device and splitting the batch anyway."""
    p = policy(max_batch_size=8, max_queue_delay_s=0.010)
    sizes = closed_loop(p, 8, 30, fixed_s=0.100, per_row_s=0.001, gap_s=0.002)
    assert 1 in sizes[-10:]
    q = policy(max_batch_size=8, max_queue_delay_s=0.050)  # allowed: the batches stay whole
    sizes = closed_loop(q, 8, 30, fixed_s=0.100, per_row_s=0.001, gap_s=0.002)
    assert sizes[-10:] == [8] * 10


def test_no_hold_after_a_batch_of_one_request_however_many_rows() -> None:
    """One caller sent 4 rows, then 2: nobody else is on the way, so nothing waits."""
    p = policy(max_batch_size=8, max_queue_delay_s=0.010)
    closed_loop(p, 8, 30, fixed_s=0.010, per_row_s=0.001, gap_s=0.0001)  # window learned
    now = 100.0
    assert p.queued == 0 and p.in_flight == 0
    rid = p.submit("m", 4, now=now)
    (b,) = p.poll(now).batches
    p.on_batch_done(b.batch_id, 0.014, now=now + 0.014)
    again = p.submit("m", 2, now=now + 0.0141)
    (b,) = p.poll(now + 0.0141).batches
    assert b.request_ids == (again,) and rid != again


def test_stats_count_batch_sizes_and_time_in_the_queue() -> None:
    p = policy(max_batch_size=4)
    first = p.submit("m", 1, now=0.0)
    (running,) = p.poll(0.0).batches  # a lone request at once: waited 0 s
    assert running.request_ids == (first,)
    p.submit("m", 2, now=0.1)
    p.submit("m", 1, now=0.2)
    p.on_batch_done(running.batch_id, 0.5)
    (b,) = p.poll(0.5).batches  # both, waited 0.4 s and 0.3 s
    assert b.rows == 3
    s = p.stats()["m"]
    assert s.batch_sizes == ((1, 1), (3, 1))  # for the metrics' batch-size histogram
    assert s.queue_s == pytest.approx(0.7)


def test_the_hand_off_counts_as_the_fixed_cost_of_a_batch() -> None:
    """A no-op model in the worker: its forward pass costs nothing, but each batch takes 2 ms
    from dispatch to result (the hand-off). Callers back 0.1 ms apart are waited for, so the
    batches stay whole; without the hand-off there is nothing to save and nothing waits."""
    p = policy(max_batch_size=8, max_queue_delay_s=0.010)
    sizes = closed_loop(p, 8, 30, fixed_s=0.0, per_row_s=1e-6, gap_s=0.0001, handoff_s=0.002)
    assert sizes[-10:] == [8] * 10
    q = policy(max_batch_size=8, max_queue_delay_s=0.010)
    sizes = closed_loop(q, 8, 30, fixed_s=0.0, per_row_s=1e-6, gap_s=0.0001)
    assert 1 in sizes[-10:]


def test_a_lone_caller_never_waits_whatever_a_batch_costs() -> None:
    p = policy(max_batch_size=8, max_queue_delay_s=0.010)
    sizes = closed_loop(p, 1, 30, fixed_s=0.0, per_row_s=1e-6, gap_s=0.0001, handoff_s=0.002)
    assert sizes == [1] * 30
    assert p.stats()["m"].queue_s == 0.0  # each request dispatched the moment it came


def learn_handoff(p: BatchPolicy) -> float:
    """Batches of 1 and 4 requests of a model whose forward pass is free and whose batches
    take 1 ms from dispatch to result; the callers of the batches of 4 back 0.1 ms apart."""
    t = 0.0
    for rows in (1, 4, 1, 4):
        t += 1.0
        for _ in range(rows):
            p.submit("m", 1, now=t)
        (b,) = p.poll(t).batches
        p.on_batch_done(b.batch_id, 1e-6 * rows, now=t + 0.001)
        for i in range(rows):
            p.cancel(p.submit("m", 1, now=t + 0.001 + (i + 1) * 0.0001))
    return t + 1.0


def test_batches_grow_while_more_callers_than_a_batch_keep_sending() -> None:
    """Requests arrived while the last batch ran (more callers than it held): after it, the
    partial batch is held while rows keep coming 0.1 ms apart, past the 3 it had, and goes
    0.2 ms (two gaps) after the last one."""
    p = policy(max_batch_size=16, max_queue_delay_s=0.010)
    t = learn_handoff(p)
    ids = [p.submit("m", 1, now=t) for _ in range(3)]
    (b,) = p.poll(t).batches
    assert b.request_ids == tuple(ids)
    waiting = [p.submit("m", 1, now=t + 0.0005 + i * 0.0001) for i in range(2)]  # it runs
    t += 0.001
    p.on_batch_done(b.batch_id, 3e-6, now=t)
    d = p.poll(t)
    assert d.batches == () and d.wake_at == pytest.approx(t + 0.0002)
    for i in range(1, 5):  # 4 more back, 0.1 ms apart: each extends the hold
        waiting.append(p.submit("m", 1, now=t + i * 0.0001))
        assert p.poll(t + i * 0.0001).batches == ()
    last = t + 0.0004
    d = p.poll(last + 0.00019)
    assert d.batches == () and d.wake_at == pytest.approx(last + 0.0002)
    (b,) = p.poll(last + 0.0002).batches
    assert b.request_ids == tuple(waiting)  # 6 rows, where the last batch had 3


def test_a_closed_loop_of_exactly_the_batch_does_not_grow() -> None:
    """Nobody sent while the batch of 3 ran: its 3 callers are all there are, so the batch
    leaves the moment the third is back (no wait for rows that will not come)."""
    p = policy(max_batch_size=16, max_queue_delay_s=0.010)
    t = learn_handoff(p)
    for _ in range(3):
        p.submit("m", 1, now=t)
    (b,) = p.poll(t).batches
    t += 0.001
    p.on_batch_done(b.batch_id, 3e-6, now=t)
    back = [p.submit("m", 1, now=t + i * 0.0001) for i in (1, 2)]
    assert p.poll(t + 0.0002).batches == ()  # 2 of 3 back: held (the refill window)
    back.append(p.submit("m", 1, now=t + 0.0003))
    (b,) = p.poll(t + 0.0003).batches
    assert b.request_ids == tuple(back)


def test_a_full_batch_in_the_schedulers_seconds() -> None:
    """What ``max_batch_size`` rows add up to at the measured marginal cost: per row, or per
    real token at the mean length seen (within ``max_batch_tokens``) for sequences."""
    p = policy(max_batch_size=8, max_batch_tokens=1000)
    assert p.full_batch_s("m") is None  # never run: nothing measured
    p.submit("m", 2, now=0.0)
    (b,) = p.poll(0.0).batches
    p.on_batch_done(b.batch_id, 0.02)  # 10 ms a row
    assert p.full_batch_s("m") == pytest.approx(8 * 0.01)
    for length in (10, 30):  # one row each: 20 real tokens a row on average
        p.submit("t", 1, now=1.0, length=length)
        (b,) = p.poll(1.0).batches
        p.on_batch_done(b.batch_id, 0.001 * length)  # 1 ms a token
    assert p.full_batch_s("t") == pytest.approx(8 * 20 * 0.001)
    small = policy(max_batch_size=8, max_batch_tokens=100)
    small.submit("t", 1, now=0.0, length=50)
    (b,) = small.poll(0.0).batches
    small.on_batch_done(b.batch_id, 0.05)
    assert small.full_batch_s("t") == pytest.approx(100 * 0.001)  # the token budget binds


def test_the_worker_pipeline_is_two_batches_on_every_device_unless_set() -> None:
    from p2pagent.inference.device import DeviceInfo
    from p2pagent.inference.engine import resolve_config

    cpu, cuda = DeviceInfo("cpu", "cpu"), DeviceInfo("cuda:0", "cuda:0 (test)")
    assert resolve_config(InferenceConfig(), cpu).worker_pipeline_depth == 2
    assert resolve_config(InferenceConfig(), cuda).worker_pipeline_depth == 2
    assert resolve_config(InferenceConfig(worker_pipeline_depth=1), cpu).worker_pipeline_depth == 1
    assert resolve_config(InferenceConfig(pipeline_depth=1), cpu).worker_pipeline_depth == 2

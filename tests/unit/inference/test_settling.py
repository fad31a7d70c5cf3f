"""Rule 3's settling (``inference/settling.py``) as the batching policy applies it: how long a
partial batch for an idle model worker waits for more rows."""

from __future__ import annotations

import pytest

from p2pagent.inference.batching import BatchPolicy
from tests.unit.inference.test_batching import policy


def learn_worker_cost(p: BatchPolicy, model: str = "w", worker: bool = True) -> float:
    """Batches of 1 and 4 requests of a model in the model worker (``worker``; else in this
    process), each 1 ms from dispatch to result (the hand-off: its forward pass is free);
    each polled once it can go."""
    t = 0.0
    for rows in (1, 4, 1, 4):
        t += 1.0
        for _ in range(rows):
            p.submit(model, 1, now=t, worker=worker)
        (b,) = p.poll(t + 0.01).batches
        p.on_batch_done(b.batch_id, 1e-6 * rows, now=t + 0.011)
    return t + 1.0


def test_an_idle_worker_waits_for_overlapping_requests_what_a_batch_costs() -> None:
    """Rule 3, settling: requests of the model came while others waited (several callers),
    so a partial batch for the idle worker waits up to what a batch costs (1 ms here), with
    a wake-up then, and takes what arrived meanwhile."""
    p = policy(max_batch_size=16, max_queue_delay_s=0.010)
    t = learn_worker_cost(p)
    a = p.submit("w", 1, now=t, worker=True)
    d = p.poll(t)
    assert d.batches == () and d.wake_at == pytest.approx(t + 0.001) and not d.repoll
    b = p.submit("w", 1, now=t + 0.0004, worker=True)
    d = p.poll(t + 0.0004)
    assert d.batches == () and d.wake_at == pytest.approx(t + 0.001)
    assert p.poll(t + 0.00099).batches == ()
    d = p.poll(t + 0.001)
    (batch,) = d.batches
    assert batch.request_ids == (a, b) and not d.repoll


def many_callers(p: BatchPolicy, t: float, gap: float = 0.002, n: int = 3) -> float:
    """Rounds of ``n`` requests ``gap`` apart, the later ones arriving while the first
    waits: most requests overlap (``n`` callers), arriving ``gap`` apart."""
    for _ in range(40):
        for i in range(n):
            p.submit("w", 1, now=t + i * gap, worker=True)
        (b,) = p.poll(t + 0.05).batches  # past any hold: this is the learning
        p.on_batch_done(b.batch_id, 3e-6, now=t + 0.051)
        t += 1.0
    return t


def test_many_callers_grow_a_worker_batch_while_requests_keep_coming() -> None:
    """Rule 3, growing: where most requests overlap, a partial batch for the idle worker
    waits past what a batch costs (1 ms here) while the next request is expected within two
    measured gaps (2 ms each), and goes once none came for that long."""
    p = policy(max_batch_size=16, max_queue_delay_s=0.010)
    t = many_callers(p, learn_worker_cost(p))
    a = p.submit("w", 1, now=t, worker=True)
    d = p.poll(t)
    assert d.batches == () and d.wake_at == pytest.approx(t + 0.004)
    b = p.submit("w", 1, now=t + 0.003, worker=True)
    d = p.poll(t + 0.003)
    # b's own gap (3 ms) joined the average: two of them from b on
    assert d.batches == () and d.wake_at is not None and t + 0.007 < d.wake_at < t + 0.0075
    assert p.poll(t + 0.0069).batches == ()
    (batch,) = p.poll(d.wake_at).batches
    assert batch.request_ids == (a, b)


def test_a_growing_worker_batch_goes_at_max_queue_delay() -> None:
    """Requests that never stop coming hold a batch at most ``max_queue_delay_s``."""
    p = policy(max_batch_size=64, max_queue_delay_s=0.010)
    t = many_callers(p, learn_worker_cost(p), n=8)
    ids = []
    for i in range(5):
        ids.append(p.submit("w", 1, now=t + i * 0.002, worker=True))
        d = p.poll(t + i * 0.002)
        assert d.batches == () and d.wake_at is not None and d.wake_at <= t + 0.010 + 1e-9
    ids.append(p.submit("w", 1, now=t + 0.010, worker=True))
    (batch,) = p.poll(t + 0.010).batches
    assert batch.request_ids == tuple(ids)


def test_a_half_full_batch_goes_to_the_idle_worker_at_once() -> None:
    p = policy(max_batch_size=16, max_queue_delay_s=0.010)
    t = learn_worker_cost(p)
    ids = [p.submit("w", 1, now=t, worker=True) for _ in range(8)]
    (batch,) = p.poll(t).batches
    assert batch.request_ids == tuple(ids)


def test_a_lone_caller_of_a_worker_model_waits_one_loop_turn_at_most() -> None:
    """One request at a time never overlaps: once the overlap of the learning batches has
    faded, a lone request waits at most for one more poll at the same instant (the loop's
    next turn, microseconds), never for time; and where the cost is unknown, not at all."""
    p = policy(max_batch_size=16, max_queue_delay_s=0.010)
    t = learn_worker_cost(p)
    polls: list[int | None] = []  # polls at the instant it came; None: it waited 1 ms
    for _ in range(100):
        t += 0.01
        rid = p.submit("w", 1, now=t, worker=True)
        for n in range(1, 4):
            d = p.poll(t)  # the clock does not move: only a loop turn passes
            if d.batches:
                polls.append(n)
                break
            # held: for a turn (poll again on the next) or until the cost has passed
            assert d.repoll or (d.wake_at is not None and t < d.wake_at <= t + 0.0011)
        else:
            d = p.poll(t + 0.001)  # the overlap of the learning batches, fading
            polls.append(None)
        assert d.batches[0].request_ids == (rid,)
        p.on_batch_done(d.batches[0].batch_id, 1e-6, now=t + 0.001)
    # Overlapping at first (the batches of 4): waited; lone requests from then on at most
    # one turn, and none once the batches were all one row (their cost unknown again).
    assert polls[0] is None and set(polls[70:]) <= {1, 2} and polls[-1] == 1
    fresh = policy(max_batch_size=16, max_queue_delay_s=0.010)
    fresh.submit("w", 1, now=0.0, worker=True)
    d = fresh.poll(0.0)
    assert len(d.batches) == 1 and not d.repoll


def test_a_batch_in_this_process_never_settles() -> None:
    """Settling is for the worker's hand-off: a model run in this process goes at once."""
    p = policy(max_batch_size=16, max_queue_delay_s=0.010)
    t = learn_worker_cost(p, "m", worker=False)
    rid = p.submit("m", 1, now=t)
    d = p.poll(t)
    assert d.batches[0].request_ids == (rid,) and not d.repoll


def test_a_settling_request_still_expires_at_its_deadline() -> None:
    p = policy(max_batch_size=16, max_queue_delay_s=0.010)
    t = learn_worker_cost(p)
    rid = p.submit("w", 1, now=t, worker=True, deadline=t + 0.0005)
    d = p.poll(t)
    assert d.batches == () and d.wake_at == pytest.approx(t + 0.0005)  # before the 1 ms
    d = p.poll(t + 0.0005)
    assert [e.request_id for e in d.expired] == [rid] and d.batches == ()


def test_a_request_joining_a_held_worker_batch_needs_no_poll_until_the_wake_up() -> None:
    """``quiet``: while many callers' batch grows, an arrival that joins it (same model and
    group, under half full, no earlier deadline) changes nothing before the last poll's
    wake-up; one that fills it to half, brings an earlier deadline or comes after the batch
    went needs a poll."""
    p = policy(max_batch_size=8, max_queue_delay_s=0.010)
    t = many_callers(p, learn_worker_cost(p))
    p.submit("w", 1, now=t, worker=True)
    d = p.poll(t)
    assert d.batches == () and d.wake_at is not None
    b = p.submit("w", 1, now=t + 0.001, worker=True)
    assert p.quiet(b)
    early = p.submit("w", 1, now=t + 0.001, worker=True, deadline=d.wake_at - 0.0005)
    assert not p.quiet(early)
    fourth = p.submit("w", 1, now=t + 0.001, worker=True)
    assert not p.quiet(fourth)  # four rows: half of a batch of 8, it goes now
    (batch,) = p.poll(t + 0.001).batches
    assert len(batch.request_ids) == 4
    late = p.submit("w", 1, now=t + 0.002, worker=True)
    assert not p.quiet(late)  # the last poll held nothing: the worker is busy


def test_a_lone_request_is_never_quiet() -> None:
    p = policy(max_batch_size=8, max_queue_delay_s=0.010)
    rid = p.submit("w", 1, now=0.0, worker=True)
    assert not p.quiet(rid)
    other = p.submit("m", 1, now=0.0)
    assert not p.quiet(other)


def test_a_growing_batch_stops_growing_once_it_holds_every_caller() -> None:
    """A closed loop of 3 callers sends nothing more once its 3 rows are queued: the batch
    then waits only what a batch costs (1 ms), not two more gaps for rows that never come."""
    p = policy(max_batch_size=16, max_queue_delay_s=0.010)
    t = many_callers(p, learn_worker_cost(p), n=3)
    ids = [p.submit("w", 1, now=t + i * 0.0002, worker=True) for i in range(3)]
    d = p.poll(t + 0.0004)
    assert d.batches == () and d.wake_at is not None and abs(d.wake_at - (t + 0.001)) < 1e-4
    assert not p.quiet(ids[-1])
    (batch,) = p.poll(d.wake_at).batches
    assert batch.request_ids == tuple(ids)

"""The continuous-batching scheduler, driven step by step with a fake clock."""

from __future__ import annotations

import pytest

from p2pagent.errors import InvalidArgument, ResourceExhausted
from p2pagent.inference.generation.scheduler import (
    DecodeScheduler,
    Finished,
    FinishReason,
    Phase,
    PrefillChunk,
)


def make(**kw: int) -> DecodeScheduler:
    args = {
        "kv_cache_bytes": 10_000,
        "kv_bytes_per_token": 1,
        "max_running": 8,
        "prefill_tokens_per_step": 100,
        "max_queued": 4,
    }
    args.update(kw)
    return DecodeScheduler(**args)


def test_join_every_step_and_leave_at_length() -> None:
    s = make()
    s.submit(1, prompt_tokens=10, max_new_tokens=3, now=0.0)
    p = s.plan(now=0.0)
    assert p.prefill == (PrefillChunk(1, 0, 10, True),) and p.decode == ()
    assert s.complete(p) == []
    # Sequence 2 arrives while 1 decodes: it joins at the very next step.
    s.submit(2, prompt_tokens=5, max_new_tokens=2, now=0.5)
    p = s.plan(now=1.0)
    assert p.decode == (1,)
    assert [c.seq_id for c in p.prefill] == [2]
    assert p.admitted[0].seq_id == 2 and p.admitted[0].waited_s == pytest.approx(0.5)
    assert s.complete(p) == []
    p = s.plan(now=2.0)
    assert p.decode == (1, 2)
    # 1 has 3 tokens (first from prefill + 2 decodes), 2 has 2: both leave, by length.
    assert s.complete(p) == [Finished(1, FinishReason.LENGTH), Finished(2, FinishReason.LENGTH)]
    assert s.running == 0 and not s.plan(now=3.0).has_work


def test_engine_stop_leaves_and_others_continue() -> None:
    s = make()
    for i in (1, 2):
        s.submit(i, 4, 10, now=0.0)
    s.complete(s.plan(0.0))
    p = s.plan(1.0)
    assert s.complete(p, stopped={2}) == [Finished(2, FinishReason.STOP)]
    assert s.plan(2.0).decode == (1,)


def test_prefill_budget_chunks_a_long_prompt_and_keeps_decoding() -> None:
    s = make(prefill_tokens_per_step=32)
    s.submit(1, 4, 50, now=0.0)
    s.complete(s.plan(0.0))
    s.submit(2, 70, 5, now=0.0)
    seen: list[PrefillChunk] = []
    for step in range(3):
        p = s.plan(float(step))
        # The running sequence decodes in every step while the long prompt is prefilled.
        assert p.decode == (1,)
        seen.extend(p.prefill)
        assert sum(c.end - c.start for c in p.prefill) <= 32
        s.complete(p)
    assert seen == [
        PrefillChunk(2, 0, 32, False),
        PrefillChunk(2, 32, 64, False),
        PrefillChunk(2, 64, 70, True),
    ]
    assert s.phase(2) is Phase.DECODING and s.generated(2) == 1


def test_budget_shared_in_arrival_order_part_way_prompt_first() -> None:
    s = make(prefill_tokens_per_step=10)
    s.submit(1, 15, 2, now=0.0)
    s.submit(2, 3, 2, now=0.0)
    p = s.plan(0.0)
    assert p.prefill == (PrefillChunk(1, 0, 10, False),)
    s.complete(p)
    p = s.plan(1.0)
    assert p.prefill == (PrefillChunk(1, 10, 15, True), PrefillChunk(2, 0, 3, True))


def test_admission_waits_for_kv_budget_and_is_first_come_first_served() -> None:
    # Budget 100 tokens; the running set costs n * longest limit (left-padded batch).
    s = make(kv_cache_bytes=100)
    s.submit(1, 20, 20, now=0.0)  # limit 40
    s.submit(2, 30, 30, now=0.0)  # limit 60: 2 * 60 = 120 > 100, waits
    s.submit(3, 5, 5, now=0.0)  # would fit (3 * 40 > 100 no; but must not jump the queue)
    p = s.plan(0.0)
    assert [a.seq_id for a in p.admitted] == [1]
    assert s.reserved_bytes == 40 and s.waiting == 2
    s.complete(p)
    for step in range(1, 20):
        p = s.plan(float(step))
        assert s.reserved_bytes <= 100
        if s.complete(p):
            break
    # 1 left after 20 tokens: 2 is admitted next (alone it costs 60), then 3 beside it.
    p = s.plan(30.0)
    assert [a.seq_id for a in p.admitted] == [2]
    s.complete(p)
    assert s.phase(3) is Phase.WAITING  # 2 * 60 = 120 > 100


def test_request_that_can_never_fit_is_refused_before_queueing() -> None:
    s = make(kv_cache_bytes=100, kv_bytes_per_token=2)
    with pytest.raises(InvalidArgument, match=r"generation\.kv_cache_bytes"):
        s.submit(1, 40, 20, now=0.0)
    assert s.waiting == 0


def test_queue_full_is_resource_exhausted() -> None:
    s = make(max_queued=2)
    s.submit(1, 1, 1, now=0.0)
    s.submit(2, 1, 1, now=0.0)
    with pytest.raises(ResourceExhausted, match="queue full") as err:
        s.submit(3, 1, 1, now=0.0)
    assert err.value.retry_after_s is not None
    s.plan(0.0)  # both admitted: room again
    s.submit(3, 1, 1, now=0.0)


def test_max_running_bounds_the_batch() -> None:
    s = make(max_running=2)
    for i in range(3):
        s.submit(i, 1, 5, now=0.0)
    p = s.plan(0.0)
    assert len(p.admitted) == 2 and s.waiting == 1


def test_cancel_waiting_is_immediate_running_at_next_step() -> None:
    s = make(kv_cache_bytes=50)
    s.submit(1, 10, 30, now=0.0)
    s.submit(2, 10, 30, now=0.0)  # waits: 2 * 40 > 50
    s.submit(3, 1, 1, now=0.0)
    assert s.cancel(3) and s.waiting == 2
    p = s.plan(0.0)
    assert [a.seq_id for a in p.admitted] == [1]
    s.complete(p)
    assert s.cancel(1)
    assert not s.cancel(1)  # once
    p = s.plan(1.0)
    # 1's slot is freed in this very plan, and 2 (which did not fit beside it) joins.
    assert p.released == (1,) and 1 not in p.decode
    assert [a.seq_id for a in p.admitted] == [2]
    assert not s.cancel(99)


def test_cancel_during_a_step_is_not_reported_finished() -> None:
    s = make()
    s.submit(1, 3, 1, now=0.0)
    p = s.plan(0.0)
    s.cancel(1)  # the caller hangs up while the step runs
    assert s.complete(p) == []
    assert s.plan(1.0).released == (1,)
    assert s.running == 0


def test_failed_sequences_leave_with_error() -> None:
    s = make()
    s.submit(1, 3, 5, now=0.0)
    s.submit(2, 3, 5, now=0.0)
    s.complete(s.plan(0.0))
    assert s.fail([1]) == [Finished(1, FinishReason.ERROR)]
    assert s.plan(1.0).decode == (2,)


@pytest.mark.parametrize(("prompt", "new"), [(0, 5), (5, 0)])
def test_empty_prompt_or_no_new_tokens_refused(prompt: int, new: int) -> None:
    with pytest.raises(InvalidArgument, match="at least one"):
        make().submit(1, prompt, new, now=0.0)


def test_duplicate_id_refused() -> None:
    s = make()
    s.submit(1, 1, 1, now=0.0)
    with pytest.raises(InvalidArgument, match="already"):
        s.submit(1, 1, 1, now=0.0)


def test_room_for_says_whether_a_sequence_would_start_at_the_next_step() -> None:
    s = make(kv_cache_bytes=100, max_running=2)
    assert s.room_for(10, 10)
    assert not s.room_for(60, 50)  # alone over the budget
    s.submit(1, prompt_tokens=10, max_new_tokens=30, now=0.0)
    assert not s.room_for(1, 1)  # something is queued ahead of it
    s.complete(s.plan(now=0.0))
    assert s.room_for(10, 30)  # 2 x 40 bytes fit
    assert not s.room_for(10, 50)  # 2 x 60 bytes would not
    s.submit(2, prompt_tokens=10, max_new_tokens=10, now=0.0)
    s.complete(s.plan(now=0.0))
    assert not s.room_for(1, 1)  # both running slots taken

"""Ragged batching as a pure unit: bucket choice, padding and masks, the token budget, and
the batching policy forming batches of different lengths under it."""

from __future__ import annotations

import numpy as np
import pytest

from p2pagent.inference import ragged
from p2pagent.inference.batching import BatchPolicy
from p2pagent.inference.config import InferenceConfig


def test_a_bucket_rounds_a_length_up_to_its_multiple() -> None:
    assert ragged.bucket_length(7, 0) == 7
    assert ragged.bucket_length(7, 1) == 7
    assert ragged.bucket_length(7, 8) == 8
    assert ragged.bucket_length(8, 8) == 8
    assert ragged.bucket_length(9, 8) == 16
    assert ragged.batch_length([3, 9, 5], 0) == 9
    assert ragged.batch_length([3, 9, 5], 4) == 12


def test_padding_fills_ids_with_the_pad_token_and_the_mask_with_zeros() -> None:
    ids = np.array([[101, 7, 102]], dtype=np.int64)
    mask = np.ones_like(ids)
    padded = ragged.pad_to(ids, 5, 0)
    assert padded.tolist() == [[101, 7, 102, 0, 0]]
    assert ragged.pad_to(mask, 5, 0).tolist() == [[1, 1, 1, 0, 0]]
    assert ragged.pad_to(ids, 3, 0) is ids  # already the batch's length: no copy
    with pytest.raises(ValueError):
        ragged.pad_to(ids, 2, 0)


def test_the_token_budget_bounds_rows_times_the_padded_length() -> None:
    kw = {"max_rows": 32, "max_tokens": 100, "bucket": 0}
    assert ragged.fits(0, [], 1, 500, **kw)  # an empty batch takes anything: never starved
    assert ragged.fits(4, [10, 10, 10, 10], 1, 20, **kw)  # 5 x 20 = 100
    assert not ragged.fits(4, [10, 10, 10, 10], 1, 21, **kw)  # 5 x 21 = 105
    assert ragged.fits(4, [10] * 4, 1, 12, **kw)  # 5 x 12 = 60
    assert not ragged.fits(4, [10] * 4, 1, 12, max_rows=32, max_tokens=100, bucket=24)
    assert not ragged.fits(32, [1] * 32, 1, 1, **kw)  # the row bound still holds
    assert ragged.padding_ratio(75, 100) == pytest.approx(0.25)
    assert ragged.padding_ratio(0, 0) == 0.0


def _policy(**kw: object) -> BatchPolicy:
    cfg = InferenceConfig(max_queue_delay_s=0.0, pipeline_depth=1, **kw)  # type: ignore[arg-type]
    return BatchPolicy(cfg)


def test_requests_of_different_lengths_share_one_batch() -> None:
    p = _policy(max_batch_size=8, max_batch_tokens=1000, max_padding_ratio=1.0)
    for n in (5, 17, 9, 30):
        p.submit("m", 1, 0.0, group="ragged", length=n)
    (batch,) = p.poll(0.0).batches
    assert [r.length for r in batch.requests] == [5, 17, 9, 30]
    stats = p.stats()["m"]
    assert stats.tokens == 61 and stats.padded_tokens == 4 * 30
    assert stats.padding_ratio == pytest.approx(1 - 61 / 120)


def test_the_policy_cuts_a_batch_at_the_token_budget() -> None:
    p = _policy(max_batch_size=32, max_batch_tokens=64, max_padding_ratio=1.0)
    for n in (10, 10, 10, 40, 8, 30):
        p.submit("m", 1, 0.0, group="ragged", length=n)
    (first,) = p.poll(0.0).batches
    # 3 x 10 = 30 fits; the 40 would make 4 x 40 = 160 > 64 and waits; the 8 fits (40);
    # the 30 would make 5 x 30 = 150.
    assert [r.length for r in first.requests] == [10, 10, 10, 8]
    p.on_batch_done(first.batch_id, 0.01, now=0.01)
    (second,) = p.poll(0.02).batches
    assert [r.length for r in second.requests] == [40]  # 2 x 40 = 80 > 64: alone
    p.on_batch_done(second.batch_id, 0.01, now=0.03)
    (third,) = p.poll(0.04).batches
    assert [r.length for r in third.requests] == [30]
    assert p.stats()["m"].mean_queue_s > 0


def test_requests_that_would_make_a_batch_mostly_padding_wait_for_one_of_their_length() -> None:
    p = _policy(max_batch_size=8, max_batch_tokens=1000, max_padding_ratio=0.3)
    for n in (10, 40, 12, 9, 38, 11):
        p.submit("m", 1, 0.0, group="ragged", length=n)
    (first,) = p.poll(0.0).batches
    assert [r.length for r in first.requests] == [10, 12, 9, 11]  # 40 and 38 would pad 55%
    p.on_batch_done(first.batch_id, 0.01, now=0.01)
    (second,) = p.poll(0.02).batches
    assert [r.length for r in second.requests] == [40, 38]  # in arrival order, together
    assert p.queued == 0
    stats = p.stats()["m"]
    assert stats.padding_ratio <= 0.3


def test_the_oldest_request_always_goes_whatever_its_length() -> None:
    p = _policy(max_batch_size=8, max_batch_tokens=100, max_padding_ratio=0.1)
    p.submit("m", 1, 0.0, group="ragged", length=500)
    p.submit("m", 1, 0.0, group="ragged", length=3)
    (first,) = p.poll(0.0).batches
    assert [r.length for r in first.requests] == [500]


def test_buckets_count_the_padding_they_add() -> None:
    p = _policy(max_batch_size=8, max_batch_tokens=1000, length_bucket=16, max_padding_ratio=1)
    for n in (3, 5):
        p.submit("m", 1, 0.0, group="ragged", length=n)
    p.poll(0.0)
    stats = p.stats()["m"]
    assert (stats.tokens, stats.padded_tokens) == (8, 32)


def test_the_backlog_counts_queued_tokens_at_the_measured_cost_per_token() -> None:
    p = _policy(max_batch_size=8, max_batch_tokens=1000, max_padding_ratio=1.0)
    p.submit("m", 1, 0.0, group="ragged", length=10)
    p.submit("m", 1, 0.0, group="ragged", length=30)
    (batch,) = p.poll(0.0).batches
    p.on_batch_done(batch.batch_id, 0.4, now=0.4)  # 40 real tokens in 0.4 s
    assert p.seconds_per_token("m") == pytest.approx(0.01)
    p.submit("m", 1, 1.0, group="ragged", length=100)
    p.submit("m", 2, 1.0, group="ragged", length=5)
    # 100 + 2 x 5 tokens queued at 0.01 s each; by rows it would have been 3 x 0.2 s.
    assert p.estimated_backlog_s() == pytest.approx(1.1)


def test_what_a_token_adds_is_the_slope_through_batches_of_different_token_counts() -> None:
    # 20 ms per batch (fixed) + 1 ms per real token: the mean per token of a short batch
    # carries the fixed cost, the slope does not.
    p = _policy(max_batch_size=8, max_batch_tokens=10_000, max_padding_ratio=1.0)
    assert p.marginal_seconds_per_token("m") is None
    for length in (10, 100, 10, 50, 200):
        p.submit("m", 1, 0.0, group="ragged", length=length)
        (batch,) = p.poll(0.0).batches
        p.on_batch_done(batch.batch_id, 0.020 + 0.001 * length)
    assert p.marginal_seconds_per_token("m") == pytest.approx(0.001, rel=1e-6)
    assert p.seconds_per_token("m") > 0.0011  # type: ignore[operator]


def test_a_model_without_sequences_has_no_cost_per_token() -> None:
    p = _policy(max_batch_size=8)
    p.submit("m", 4, 0.0, group=("float32", (3,)))
    (batch,) = p.poll(0.0).batches
    p.on_batch_done(batch.batch_id, 0.04)
    assert p.marginal_seconds_per_token("m") is None  # its tasks are costed per row
    assert p.marginal_seconds_per_row("m") == pytest.approx(0.01)

"""Upload token bucket: burst, sustained rate, debt for oversized chunks, clock steps."""

from __future__ import annotations

import pytest

from p2pagent.errors import InvalidArgument
from p2pagent.models.ratelimit import TokenBucket


def test_burst_then_rate() -> None:
    b = TokenBucket(rate_bytes_per_s=1000, burst=3000)
    assert b.reserve(1000, 0.0) == 0.0
    assert b.reserve(2000, 0.0) == 0.0
    assert b.reserve(500, 0.0) == pytest.approx(0.5)
    # Later reservations queue behind the debt.
    assert b.reserve(500, 0.0) == pytest.approx(1.0)
    assert b.available(1.0) == pytest.approx(0.0)
    assert b.reserve(100, 2.0) == 0.0


def test_long_run_rate_is_exact() -> None:
    b = TokenBucket(rate_bytes_per_s=1_000_000, burst=100_000)
    now, sent = 0.0, 0
    for _ in range(1000):
        now += b.reserve(50_000, now)  # send, then wait what it says
        sent += 50_000
    # 50 MB at 1 MB/s after a 100 kB burst: 49.9 s.
    assert now == pytest.approx((sent - 100_000) / 1_000_000)


def test_chunk_larger_than_burst_still_goes() -> None:
    b = TokenBucket(rate_bytes_per_s=1000, burst=100)
    assert b.reserve(1100, 0.0) == pytest.approx(1.0)


def test_refill_caps_at_burst() -> None:
    b = TokenBucket(rate_bytes_per_s=1000, burst=100)
    b.reserve(100, 0.0)
    assert b.available(1000.0) == 100
    assert b.reserve(200, 1000.0) == pytest.approx(0.1)


def test_clock_stepping_back_mints_nothing() -> None:
    b = TokenBucket(rate_bytes_per_s=1000, burst=1000)
    b.reserve(1000, 10.0)
    assert b.reserve(500, 5.0) == pytest.approx(0.5)
    assert b.available(10.5) == pytest.approx(0.0)


def test_unlimited_and_bad_arguments() -> None:
    b = TokenBucket(rate_bytes_per_s=0, burst=1)
    assert b.reserve(10**12, 0.0) == 0.0
    assert b.available(0.0) == float("inf")
    with pytest.raises(InvalidArgument):
        TokenBucket(-1, 10)
    with pytest.raises(InvalidArgument):
        TokenBucket(10, 0)
    with pytest.raises(InvalidArgument):
        TokenBucket(10, 10).reserve(-1, 0.0)

from __future__ import annotations

from p2pagent.transport.ratelimit import PerIdentityLimiter


def test_burst_then_steady_rate_per_identity() -> None:
    lim = PerIdentityLimiter(rate=10, burst=5)
    assert [lim.allow("a", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert lim.allow("b", 0.0)  # another caller is unaffected
    assert not lim.allow("a", 0.05)  # half a token
    assert lim.allow("a", 0.1)
    allowed = sum(lim.allow("a", 1.0 + i * 0.01) for i in range(100))  # 1 s at 100 req/s
    assert 9 <= allowed <= 16  # ~10/s plus what refilled in between


def test_tracking_is_bounded() -> None:
    lim = PerIdentityLimiter(rate=1, burst=1, max_tracked=100)
    for i in range(1000):
        lim.allow(f"c{i}", float(i))
    assert len(lim._buckets) <= 100


def test_retry_after_is_the_time_until_the_next_token() -> None:
    lim = PerIdentityLimiter(rate=10, burst=2)
    assert lim.retry_after("a", 0.0) == 0.0  # never seen: nothing to wait for
    assert lim.allow("a", 0.0) and lim.allow("a", 0.0)
    assert not lim.allow("a", 0.0)
    assert abs(lim.retry_after("a", 0.0) - 0.1) < 1e-9  # one token every 0.1 s
    assert abs(lim.retry_after("a", 0.04) - 0.06) < 1e-9
    assert not lim.allow("a", 0.099)  # refused just before it
    assert lim.allow("a", 0.1 + 1e-9)  # and allowed once it has passed

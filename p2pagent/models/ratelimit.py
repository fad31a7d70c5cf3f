"""Upload rate cap (pure): a token bucket in bytes.

The serving side reserves a chunk's bytes before sending it and waits the returned delay. The
bucket may go into debt, so a chunk larger than the burst still goes out (after a longer
wait) instead of never; later reservations queue behind the debt, which keeps the long-run
rate at ``rate_bytes_per_s`` exactly.
"""

from __future__ import annotations

from p2pagent.errors import InvalidArgument


class TokenBucket:
    """``rate_bytes_per_s`` sustained, ``burst`` bytes at once; rate 0 means unlimited."""

    def __init__(self, rate_bytes_per_s: float, burst: float, now: float = 0.0) -> None:
        if rate_bytes_per_s < 0:
            raise InvalidArgument(
                f"rate must be >= 0 bytes/s (0 = unlimited), got {rate_bytes_per_s}"
            )
        if burst <= 0:
            raise InvalidArgument(f"burst must be > 0 bytes, got {burst}")
        self.rate = float(rate_bytes_per_s)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def _refill(self, now: float) -> None:
        # A clock that steps back must not mint tokens (nor take them away).
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now

    def reserve(self, n: int, now: float) -> float:
        """Takes ``n`` bytes' worth of tokens; returns seconds to wait before sending them."""
        if n < 0:
            raise InvalidArgument(f"cannot reserve a negative byte count ({n})")
        if self.rate == 0:
            return 0.0
        self._refill(now)
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def available(self, now: float) -> float:
        """Bytes that could be sent at ``now`` without waiting (negative while in debt)."""
        if self.rate == 0:
            return float("inf")
        self._refill(now)
        return self._tokens

"""Per-identity request rate limiting for the public API (a token bucket per caller).

Pure: the caller passes ``now``. One flooding client gets RESOURCE_EXHAUSTED while everyone
else is served; nodes are never limited (peer traffic is protocol, not load). A refusal
says when the next token arrives (``retry_after``), so a client waits that long rather than
guessing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class PerIdentityLimiter:
    def __init__(self, rate: float, burst: float | None = None, max_tracked: int = 10_000) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._buckets: dict[str, _Bucket] = {}
        self._max = max_tracked

    def allow(self, identity: str, now: float) -> bool:
        b = self._buckets.get(identity)
        if b is None:
            if len(self._buckets) >= self._max:
                self._evict(now)
            b = self._buckets[identity] = _Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + (now - b.updated) * self.rate)
        b.updated = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return True
        return False

    def retry_after(self, identity: str, now: float) -> float:
        """Seconds until ``identity`` has a token again (0 when it has one now)."""
        b = self._buckets.get(identity)
        if b is None:
            return 0.0
        tokens = min(self.burst, b.tokens + (now - b.updated) * self.rate)
        return max(0.0, (1.0 - tokens) / self.rate)

    def _evict(self, now: float) -> None:
        # Buckets that refilled completely carry no information: drop them first.
        full = [
            k
            for k, b in self._buckets.items()
            if b.tokens + (now - b.updated) * self.rate >= self.burst
        ]
        for k in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[k]

"""A virtual clock with a timer heap. Nothing here reads real time.

Ties are broken by insertion order, so a run is a pure function of its seed.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class VirtualClock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        """Runs ``fn`` at virtual time ``when`` (now, if ``when`` is in the past)."""
        heapq.heappush(self._heap, (max(when, self.now), next(self._seq), fn))

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.call_at(self.now + delay, fn)

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def step(self) -> bool:
        """Runs the earliest timer; False when none is left."""
        if not self._heap:
            return False
        when, _, fn = heapq.heappop(self._heap)
        self.now = when
        fn()
        return True

    def run_until(self, t: float) -> None:
        """Runs every timer due at or before ``t``, then sets the time to ``t``."""
        while self._heap and self._heap[0][0] <= t:
            self.step()
        self.now = max(self.now, t)

    def run_until_idle(self, limit: float = float("inf")) -> None:
        while self._heap and self._heap[0][0] <= limit:
            self.step()

    def __len__(self) -> int:
        return len(self._heap)

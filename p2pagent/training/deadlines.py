"""Adaptive phase deadlines from measured arrival times (no fixed ``averaging_timeout``).

Each part that arrives in a round is one sample: seconds from the local start of its phase
to its arrival. The next phase timeout is ``margin x (median + spread_mult x MAD)`` over the
recent window, clamped to the configured bounds: a swarm that gets slower gets longer
deadlines, a fast one shorter ones, and one slow member (a minority of the samples) moves
neither the median nor the MAD much, so rounds stop waiting for it.
"""

from __future__ import annotations

import statistics
from collections import deque

from p2pagent.training.config import TrainingConfig


def phase_timeout(samples: list[float], config: TrainingConfig) -> float:
    """The timeout for one phase given recent arrival delays (seconds)."""
    if not samples:
        return config.initial_phase_timeout
    median = statistics.median(samples)
    mad = statistics.median(abs(s - median) for s in samples)
    raw = config.deadline_margin_mult * (median + config.deadline_spread_mult * mad)
    return min(config.max_phase_timeout, max(config.min_phase_timeout, raw))


class DeadlineEstimator:
    """Remembers the last ``deadline_window`` arrival delays."""

    def __init__(self, config: TrainingConfig) -> None:
        self.config = config
        self._samples: deque[float] = deque(maxlen=config.deadline_window)

    def record(self, delay: float) -> None:
        self._samples.append(max(0.0, delay))

    def timeout(self) -> float:
        return phase_timeout(list(self._samples), self.config)

    def samples(self) -> list[float]:
        return list(self._samples)

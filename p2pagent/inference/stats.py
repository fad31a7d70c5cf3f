"""Per-model counters of the inference engine and the service-time estimate.

The estimate (seconds per row, an EWMA over completed batches) is what the batching policy
charges models for fairness and what the task layer uses to predict this node's backlog.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelCounters:
    """Mutable accumulators, owned by the batching policy."""

    admitted: int = 0
    rejected: int = 0
    expired: int = 0
    cancelled: int = 0
    batches: int = 0
    #: Requests dispatched in batches.
    items: int = 0
    #: Rows (batch-dimension entries) dispatched.
    rows: int = 0
    failed_batches: int = 0
    #: Seconds per row, EWMA over successful batches; None until the first one.
    s_per_row: float | None = None

    def observe(self, rows: int, service_s: float, alpha: float) -> None:
        sample = service_s / max(rows, 1)
        if self.s_per_row is None:
            self.s_per_row = sample
        else:
            self.s_per_row += alpha * (sample - self.s_per_row)


@dataclass(frozen=True)
class ModelStats:
    """A snapshot of one model's counters, for Status, metrics and benchmarks."""

    model: str
    queued: int
    admitted: int
    rejected: int
    expired: int
    cancelled: int
    batches: int
    items: int
    rows: int
    failed_batches: int
    s_per_row: float | None

    @property
    def mean_batch_size(self) -> float:
        """Mean rows per batch (0 before the first batch)."""
        return self.rows / self.batches if self.batches else 0.0

    @property
    def mean_requests_per_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    @staticmethod
    def of(model: str, queued: int, c: ModelCounters) -> ModelStats:
        return ModelStats(
            model,
            queued,
            c.admitted,
            c.rejected,
            c.expired,
            c.cancelled,
            c.batches,
            c.items,
            c.rows,
            c.failed_batches,
            c.s_per_row,
        )

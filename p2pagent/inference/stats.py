"""Per-model counters of the inference engine and the service-time estimates.

Two estimates, both over completed batches with the same exponential weighting:

- ``s_per_row``: seconds per row, the batches' mean (service time / rows). What the batching
  policy charges models for fairness.
- ``marginal_s_per_row``: what one more row adds to a batch, the slope of a weighted
  least-squares line through (rows, service time). A batch has a fixed cost (the weights are
  read once per batch) and a cost per row; when batching pays, the mean of small batches
  overstates what a row costs a busy node by the fixed cost. The task layer predicts this
  node's backlog and decides how much work to hand the engine with it: using the mean there
  would start few tasks, so batches would stay small and the mean high.

The line's intercept, ``fixed_s``, bounds how long the batching policy holds a refilling
batch: waiting longer than a batch's fixed cost to merge two batches cannot pay. What a batch
costs the node is more than its forward pass, though: the hand-off to the model worker (shared
memory, a message, a wake-up) and the event loop's turn to take the result back. So a second
line goes through (rows, seconds from dispatch to result, as the engine sees them), and its
intercept, ``batch_cost_s``, is the fixed cost the policy weighs (at least ``fixed_s``): for a
no-op model in the worker it is nearly all of what a batch costs.

A model with sequences (ragged token ids) also gets the same line through (real tokens,
service time): ``marginal_s_per_token``, what one more token adds to a batch, so a task of
long sequences is estimated to cost more than one of short ones with as many rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_Fit = tuple[float, float, float, float, float]


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
    #: Rows per batch -> batches of that size (bounded by the largest batch size).
    batch_sizes: dict[int, int] = field(default_factory=dict)
    #: Token slots dispatched: real tokens (rows x own length) and padded (rows x the
    #: batch's length). A model without sequences counts one token per row.
    tokens: int = 0
    padded_tokens: int = 0
    #: Seconds dispatched requests waited in the queue, summed.
    queue_s: float = 0.0
    #: Seconds per row, EWMA over successful batches; None until the first one.
    s_per_row: float | None = None
    #: Seconds per real token (padding's cost included), EWMA; the same as ``s_per_row``
    #: for a model without sequences. What a queued ragged request is estimated to cost.
    s_per_token: float | None = None
    #: Batches with sequences (ragged token ids) have run: tokens are not rows.
    has_sequences: bool = False
    #: Exponentially weighted sums for the (rows, seconds) line: weight, x, y, xx, xy.
    _fit: _Fit = (0.0, 0.0, 0.0, 0.0, 0.0)
    #: The same for the (real tokens, seconds) line.
    _fit_t: _Fit = (0.0, 0.0, 0.0, 0.0, 0.0)
    #: The same for (rows, seconds from dispatch to result).
    _fit_d: _Fit = (0.0, 0.0, 0.0, 0.0, 0.0)
    #: What the lines say, worked out once per batch (the policy reads them on every poll
    #: and the scheduler on every request): the row slope, the fixed cost, the cost of a
    #: batch from dispatch to result, the marginal costs of a row and of a token.
    _slope_row: float | None = None
    _fixed: float | None = None
    _cost: float | None = None
    _marginal_row: float | None = None
    _marginal_token: float | None = None

    def observe(self, rows: int, service_s: float, alpha: float, tokens: int = 0) -> None:
        """A successful batch of ``rows`` (``tokens`` real tokens; 0: one per row)."""
        sample_t = service_s / max(tokens or rows, 1)
        if self.s_per_token is None:
            self.s_per_token = sample_t
        else:
            self.s_per_token += alpha * (sample_t - self.s_per_token)
        rows = max(rows, 1)
        sample = service_s / rows
        if self.s_per_row is None:
            self.s_per_row = sample
        else:
            self.s_per_row += alpha * (sample - self.s_per_row)
        self._fit = _weigh(self._fit, 1.0 - alpha, rows, service_s)
        self._fit_t = _weigh(self._fit_t, 1.0 - alpha, max(tokens or rows, 1), service_s)
        self._derive()

    def observe_dispatch(self, rows: int, seconds: float, alpha: float) -> None:
        """A successful batch of ``rows`` took ``seconds`` from dispatch to its result."""
        self._fit_d = _weigh(self._fit_d, 1.0 - alpha, max(rows, 1), max(0.0, seconds))
        self._derive()

    def _derive(self) -> None:
        mean = self.s_per_row
        # The weighted least-squares slope of batch time against rows; None without a
        # spread of batch sizes (one batch size only: no slope to see).
        slope = None if mean is None else _slope(self._fit)
        self._slope_row = slope
        fixed = None
        if slope is not None:
            w, x, y, _, _ = self._fit
            fixed = max(0.0, (y - max(0.0, slope) * x) / w)
        self._fixed = fixed
        self._marginal_row = mean if mean is None or slope is None else min(mean, max(0.0, slope))
        mean_t = self.s_per_token
        slope_t = None if mean_t is None else _slope(self._fit_t)
        self._marginal_token = (
            mean_t if mean_t is None or slope_t is None else min(mean_t, max(0.0, slope_t))
        )
        slope_d = _slope(self._fit_d)
        if slope_d is None:
            self._cost = fixed
        else:
            w, x, y, _, _ = self._fit_d
            overhead = max(0.0, (y - max(0.0, slope_d) * x) / w)
            self._cost = overhead if fixed is None else max(fixed, overhead)

    @property
    def batch_cost_s(self) -> float | None:
        """Seconds a batch costs from dispatch to result whatever its size (the intercept of
        that line, at least ``fixed_s``); None until batches of two sizes have been seen."""
        return self._cost

    @property
    def slope_known(self) -> bool:
        """Batches of different sizes have been seen (recently enough to weigh): the line
        through them says what batching saves."""
        return self._slope_row is not None

    @property
    def marginal_s_per_row(self) -> float | None:
        """Seconds one more row adds to a batch; the mean per row until batches of different
        sizes have been seen (a line needs two), never above the mean nor below zero."""
        return self._marginal_row

    @property
    def marginal_s_per_token(self) -> float | None:
        """Seconds one more real token adds to a batch (padding's cost included): the slope
        of the (tokens, seconds) line, the mean per token until tokens of different counts
        have been seen, kept between zero and the mean."""
        return self._marginal_token

    @property
    def fixed_s(self) -> float | None:
        """Seconds a batch costs whatever its size (the line's intercept, at least zero);
        None until batches of two sizes have been seen."""
        return self._fixed


def _weigh(fit: _Fit, keep: float, x_new: float, y_new: float) -> _Fit:
    """The line's weighted sums with older samples decayed by ``keep`` and one sample added."""
    w, x, y, xx, xy = fit
    return (
        w * keep + 1.0,
        x * keep + x_new,
        y * keep + y_new,
        xx * keep + x_new * x_new,
        xy * keep + x_new * y_new,
    )


def _slope(fit: _Fit) -> float | None:
    """The weighted least-squares slope of a line's sums; None without a spread of x."""
    w, x, y, xx, xy = fit
    spread = w * xx - x * x
    if w == 0.0 or spread <= 1e-9 * max(1.0, w * xx):
        return None
    return (w * xy - x * y) / spread


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
    tokens: int = 0
    padded_tokens: int = 0
    queue_s: float = 0.0
    #: (rows per batch, batches of that size), by rows.
    batch_sizes: tuple[tuple[int, int], ...] = ()

    @property
    def padding_ratio(self) -> float:
        """Share of dispatched token slots that were padding (0 before the first batch)."""
        return 0.0 if not self.padded_tokens else 1.0 - self.tokens / self.padded_tokens

    @property
    def mean_queue_s(self) -> float:
        """Mean seconds a dispatched request waited for its batch."""
        return self.queue_s / self.items if self.items else 0.0

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
            c.tokens,
            c.padded_tokens,
            c.queue_s,
            tuple(sorted(c.batch_sizes.items())),
        )

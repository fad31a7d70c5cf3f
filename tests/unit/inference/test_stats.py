"""The engine's service-time estimates: the mean per row, and what one more row adds to a
batch (the slope through batches of different sizes)."""

from __future__ import annotations

import pytest

from p2pagent.inference.stats import ModelCounters


def _observe(c: ModelCounters, batches: list[tuple[int, float]]) -> None:
    for rows, seconds in batches:
        c.observe(rows, seconds, alpha=0.2)


def test_a_fixed_cost_per_batch_is_not_charged_to_each_row() -> None:
    # 8 ms per batch (weights read once) + 1 ms per row, as a large MLP on a CPU core.
    c = ModelCounters()
    _observe(c, [(rows, 0.008 + 0.001 * rows) for rows in (1, 7, 1, 7, 3, 32, 16, 1)])
    assert c.marginal_s_per_row == pytest.approx(0.001, rel=1e-6)
    assert c.fixed_s == pytest.approx(0.008, rel=1e-6)
    assert c.s_per_row is not None and c.s_per_row > 0.002  # the mean carries the fixed cost


def test_one_batch_size_only_gives_the_mean() -> None:
    c = ModelCounters()
    assert c.marginal_s_per_row is None
    _observe(c, [(1, 0.009)] * 5)
    assert c.marginal_s_per_row == pytest.approx(0.009)
    assert c.fixed_s is None  # a line needs two sizes


def test_the_fixed_cost_is_never_negative() -> None:
    c = ModelCounters()
    _observe(c, [(1, 0.001), (8, 0.016), (1, 0.001), (8, 0.016)])  # steeper than linear
    assert c.fixed_s == 0.0


def test_the_slope_is_kept_between_zero_and_the_mean() -> None:
    # Noise that makes bigger batches faster must not give a negative cost...
    falling = ModelCounters()
    _observe(falling, [(1, 0.010), (8, 0.009), (1, 0.010), (8, 0.009)])
    assert falling.marginal_s_per_row == 0.0
    # ...nor can a row cost more than the mean of what rows cost.
    steep = ModelCounters()
    _observe(steep, [(1, 0.001), (2, 0.010)])
    assert steep.marginal_s_per_row == pytest.approx(steep.s_per_row)


def test_recent_batches_weigh_more() -> None:
    c = ModelCounters()
    _observe(c, [(rows, 0.004 * rows) for rows in (1, 4, 1, 4)])  # 4 ms a row
    _observe(c, [(rows, 0.002 + 0.001 * rows) for rows in (1, 4) * 20])  # the model got faster
    assert c.marginal_s_per_row == pytest.approx(0.001, rel=0.05)


def test_batch_cost_counts_what_a_batch_takes_besides_its_forward_pass() -> None:
    """A forward pass of 0.1 ms a row and no fixed cost, but 1 ms more from dispatch to
    result per batch (the hand-off to the model worker): the batch costs that 1 ms."""
    c = ModelCounters()
    assert c.batch_cost_s is None
    for rows in (1, 4, 2, 8):
        c.observe(rows, 0.0001 * rows, 0.3)
        c.observe_dispatch(rows, 0.001 + 0.0001 * rows, 0.3)
    assert c.fixed_s == pytest.approx(0.0, abs=1e-9)
    assert c.batch_cost_s == pytest.approx(0.001)


def test_batch_cost_is_at_least_the_forward_pass_fixed_cost() -> None:
    c = ModelCounters()
    for rows in (1, 4, 2, 8):
        c.observe(rows, 0.002 + 0.0001 * rows, 0.3)
        c.observe_dispatch(rows, 0.0001 * rows, 0.3)  # a clock that under-reports
    assert c.batch_cost_s == pytest.approx(0.002)

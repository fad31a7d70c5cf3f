"""Inference metrics per model: requests, batches, rows, batch sizes, time in the queue, and
token slots (real and padding) for models with sequences."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from p2pagent.inference.stats import ModelStats

#: Upper bounds of the batch-size histogram (rows per batch).
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def batch_size_buckets(sizes: Iterable[tuple[int, int]]) -> list[tuple[str, float]]:
    """Cumulative Prometheus buckets from (rows, batches with that many rows) pairs."""
    sizes = list(sizes)
    buckets: list[tuple[str, float]] = []
    for bound in BATCH_SIZE_BUCKETS:
        buckets.append((str(float(bound)), sum(n for rows, n in sizes if rows <= bound)))
    buckets.append(("+Inf", sum(n for _rows, n in sizes)))
    return buckets


def render(stats: Iterable[ModelStats]) -> Iterator[Metric]:
    queued = GaugeMetricFamily(
        "p2pagent_inference_queued", "Requests waiting for a batch", labels=["model"]
    )
    requests = CounterMetricFamily(
        "p2pagent_inference_requests",
        "Inference requests by outcome at admission and in the queue",
        labels=["model", "outcome"],
    )
    batches = CounterMetricFamily("p2pagent_inference_batches", "Batches run", labels=["model"])
    failed = CounterMetricFamily(
        "p2pagent_inference_failed_batches", "Batches that failed", labels=["model"]
    )
    rows = CounterMetricFamily(
        "p2pagent_inference_rows", "Rows (batch entries) run", labels=["model"]
    )
    tokens = CounterMetricFamily(
        "p2pagent_inference_tokens",
        "Token slots run, by kind: real (each request's own tokens) and padding (slots added "
        "to pad a request to its batch's length). A model without sequences counts one real "
        "token per row. rate(padding) / (rate(real) + rate(padding)) is the padding ratio",
        labels=["model", "kind"],
    )
    sizes = HistogramMetricFamily(
        "p2pagent_inference_batch_size", "Rows per batch", labels=["model"]
    )
    waited = SummaryMetricFamily(
        "p2pagent_inference_queue_seconds",
        "Time requests waited for their batch (sum and count: rate(sum) / rate(count) is the mean)",
        labels=["model"],
    )
    for s in stats:
        queued.add_metric([s.model], s.queued)
        for outcome, n in (
            ("admitted", s.admitted),
            ("rejected", s.rejected),
            ("expired", s.expired),
            ("cancelled", s.cancelled),
        ):
            requests.add_metric([s.model, outcome], n)
        batches.add_metric([s.model], s.batches)
        failed.add_metric([s.model], s.failed_batches)
        rows.add_metric([s.model], s.rows)
        tokens.add_metric([s.model, "real"], s.tokens)
        tokens.add_metric([s.model, "padding"], max(0, s.padded_tokens - s.tokens))
        sizes.add_metric([s.model], batch_size_buckets(s.batch_sizes), sum_value=s.rows)
        waited.add_metric([s.model], count_value=s.items, sum_value=s.queue_s)
    yield from (queued, requests, batches, failed, rows, tokens, sizes, waited)

"""Small helpers the concern collectors share."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

S = TypeVar("S")


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    """``name`` without ``_total``: the exposition adds it."""
    return CounterMetricFamily(name, doc, value=value)


def labelled_gauge(
    name: str, doc: str, label: str, values: Iterable[tuple[str, float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in values:
        family.add_metric([key], value)
    return family


class SnapshotCollector(Collector, Generic[S]):
    """Reads a snapshot at scrape time and yields the families ``render`` makes of it.

    ``read`` returns None while the part of the node it reads has not started: its families
    are then absent, not zero (a zero would read as "no members", a false alarm).
    """

    def __init__(self, read: Callable[[], S | None], render: Callable[[S], Iterable[Metric]]):
        self._read = read
        self._render = render

    def collect(self) -> Iterator[Metric]:
        snapshot = self._read()
        if snapshot is not None:
            yield from self._render(snapshot)

    def describe(self) -> list[Metric]:
        return []  # registering must not read a node that has not started

"""RPC metrics, labelled like go-grpc-prometheus (``grpc_service``, ``grpc_method``,
``grpc_type``, ``grpc_code``), and the registry the node's other metrics join.

Unary calls and streams have separate duration histograms: a Watch or a model upload lasts
minutes to hours, so buckets that resolve a 2 ms Status would put every stream in +Inf.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

UNARY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
STREAM_BUCKETS = (0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)

#: The four values of ``grpc_type``, as go-grpc-prometheus names them.
RPC_TYPES = ("unary", "client_stream", "server_stream", "bidi_stream")

_LABELS = ("grpc_service", "grpc_method", "grpc_type")
#: Each histogram's bucket labels ("le"), +Inf last, written as prometheus_client writes them.
_LE: dict[tuple[float, ...], tuple[str, ...]] = {
    bounds: tuple(floatToGoString(b) for b in (*bounds, math.inf))  # type: ignore[no-untyped-call]
    for bounds in (UNARY_BUCKETS, STREAM_BUCKETS)
}


def split_method(full_method: str) -> tuple[str, str]:
    """'/p2pagent.v1.AgentService/Status' -> ('p2pagent.v1.AgentService', 'Status')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or "unknown"


class RpcHandle:
    """The counts of one (method, type), resolved once and updated on every call.

    Plain numbers, turned into metric families only when scraped (``RpcCollector``):
    prometheus_client's metric children cost a lock and a few calls per update, five updates
    per call, which was more than the rest of the guard (issue 26)."""

    __slots__ = ("_metrics", "bounds", "buckets", "handled_by_code", "key", "labels",
                 "seconds_sum", "started_count", "unary")  # fmt: skip

    def __init__(self, metrics: RpcMetrics, service: str, method: str, grpc_type: str) -> None:
        self._metrics = metrics
        self.key = (service, method)
        self.labels = (service, method, grpc_type)
        self.unary = grpc_type == "unary"
        self.bounds = UNARY_BUCKETS if self.unary else STREAM_BUCKETS
        self.started_count = 0
        self.handled_by_code: dict[str, int] = {}
        #: Calls by duration bucket (not cumulative; the last one is +Inf) and their sum.
        self.buckets = [0] * (len(self.bounds) + 1)
        self.seconds_sum = 0.0

    def started(self) -> None:
        self.started_count += 1
        open_calls = self._metrics.open_calls
        open_calls[self.key] = open_calls.get(self.key, 0) + 1

    def handled(self, code: str, seconds: float) -> None:
        by_code = self.handled_by_code
        by_code[code] = by_code.get(code, 0) + 1
        # A bucket counts the calls up to and including its bound ("le").
        self.buckets[bisect.bisect_left(self.bounds, seconds)] += 1
        self.seconds_sum += seconds
        open_calls = self._metrics.open_calls
        open_calls[self.key] = open_calls.get(self.key, 1) - 1

    @property
    def in_flight(self) -> int:
        return self.started_count - sum(self.handled_by_code.values())


class RpcCollector(Collector):
    """The RPC metric families, made from the handles' counts at scrape time."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        handles = list(self._metrics.handles())
        started = CounterMetricFamily(
            "p2pagent_rpc_started", "RPCs this node began to serve", labels=_LABELS
        )
        handled = CounterMetricFamily(
            "p2pagent_rpc_handled",
            "RPCs this node finished serving, by status code",
            labels=(*_LABELS, "grpc_code"),
        )
        in_flight = GaugeMetricFamily(
            "p2pagent_rpc_in_flight",
            "RPCs being served now (for streams: open streams)",
            labels=_LABELS,
        )
        unary = HistogramMetricFamily(
            "p2pagent_rpc_handling_seconds", "Time to serve a unary RPC", labels=_LABELS
        )
        streams = HistogramMetricFamily(
            "p2pagent_rpc_stream_seconds", "How long a streaming RPC stayed open", labels=_LABELS
        )
        for h in handles:
            started.add_metric(h.labels, h.started_count)
            for code, count in sorted(h.handled_by_code.items()):
                handled.add_metric((*h.labels, code), count)
            in_flight.add_metric(h.labels, h.in_flight)
            cumulative, buckets = 0, []
            for le, count in zip(_LE[h.bounds], h.buckets):
                cumulative += count
                buckets.append((le, cumulative))
            (unary if h.unary else streams).add_metric(h.labels, buckets, h.seconds_sum)
        yield from (started, handled, in_flight, unary, streams)


class RpcMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._handles: dict[tuple[str, str], RpcHandle] = {}
        self.registry.register(RpcCollector(self))
        self.dropped_payloads = Counter(
            "p2pagent_dropped_payloads",
            "Peer payloads dropped because they were malformed, oversized or of a wrong version",
            ["kind"],
            registry=self.registry,
        )
        #: (service, method) -> calls open now; read by the state metrics for Watch streams.
        self.open_calls: dict[tuple[str, str], int] = {}

    def rpc(self, full_method: str, grpc_type: str) -> RpcHandle:
        """The handle for one method; ``grpc_type`` is one of :data:`RPC_TYPES`."""
        handle = self._handles.get((full_method, grpc_type))
        if handle is None:
            service, method = split_method(full_method)
            handle = RpcHandle(self, service, method, grpc_type)
            self._handles[(full_method, grpc_type)] = handle
        return handle

    def handles(self) -> Iterator[RpcHandle]:
        return iter(list(self._handles.values()))

    def open_streams(self, service: str, method: str) -> int:
        return self.open_calls.get((service, method), 0)

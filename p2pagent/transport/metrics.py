"""RPC metrics, labelled like go-grpc-prometheus (``grpc_service``, ``grpc_method``,
``grpc_type``, ``grpc_code``), and the registry the node's other metrics join.

Unary calls and streams have separate duration histograms: a Watch or a model upload lasts
minutes to hours, so buckets that resolve a 2 ms Status would put every stream in +Inf.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

UNARY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)
STREAM_BUCKETS = (0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)

#: The four values of ``grpc_type``, as go-grpc-prometheus names them.
RPC_TYPES = ("unary", "client_stream", "server_stream", "bidi_stream")

_LABELS = ("grpc_service", "grpc_method", "grpc_type")


def split_method(full_method: str) -> tuple[str, str]:
    """'/p2pagent.v1.AgentService/Status' -> ('p2pagent.v1.AgentService', 'Status')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or "unknown"


class RpcHandle:
    """The metric children of one (method, type): resolved once, used on every call."""

    def __init__(self, metrics: RpcMetrics, service: str, method: str, grpc_type: str) -> None:
        self._metrics = metrics
        self.key = (service, method)
        self._labels = (service, method, grpc_type)
        self._started = metrics.started.labels(*self._labels)
        self._in_flight = metrics.in_flight.labels(*self._labels)
        histogram = metrics.handling if grpc_type == "unary" else metrics.stream_seconds
        self._seconds = histogram.labels(*self._labels)
        self._handled: dict[str, Any] = {}

    def started(self) -> None:
        self._started.inc()
        self._in_flight.inc()
        self._metrics.open_calls[self.key] = self._metrics.open_calls.get(self.key, 0) + 1

    def handled(self, code: str, seconds: float) -> None:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._metrics.handled.labels(*self._labels, code)
        child.inc()
        self._seconds.observe(seconds)
        self._in_flight.dec()
        self._metrics.open_calls[self.key] = self._metrics.open_calls.get(self.key, 1) - 1


class RpcMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.started = Counter(
            "p2pagent_rpc_started",
            "RPCs this node began to serve",
            _LABELS,
            registry=self.registry,
        )
        self.handled = Counter(
            "p2pagent_rpc_handled",
            "RPCs this node finished serving, by status code",
            (*_LABELS, "grpc_code"),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "p2pagent_rpc_in_flight",
            "RPCs being served now (for streams: open streams)",
            _LABELS,
            registry=self.registry,
        )
        self.handling = Histogram(
            "p2pagent_rpc_handling_seconds",
            "Time to serve a unary RPC",
            _LABELS,
            buckets=UNARY_BUCKETS,
            registry=self.registry,
        )
        self.stream_seconds = Histogram(
            "p2pagent_rpc_stream_seconds",
            "How long a streaming RPC stayed open",
            _LABELS,
            buckets=STREAM_BUCKETS,
            registry=self.registry,
        )
        self.dropped_payloads = Counter(
            "p2pagent_dropped_payloads",
            "Peer payloads dropped because they were malformed, oversized or of a wrong version",
            ["kind"],
            registry=self.registry,
        )
        #: (service, method) -> calls open now; read by the state metrics for Watch streams.
        self.open_calls: dict[tuple[str, str], int] = {}
        self._handles: dict[tuple[str, str], RpcHandle] = {}

    def rpc(self, full_method: str, grpc_type: str) -> RpcHandle:
        """The handle for one method; ``grpc_type`` is one of :data:`RPC_TYPES`."""
        handle = self._handles.get((full_method, grpc_type))
        if handle is None:
            service, method = split_method(full_method)
            handle = RpcHandle(self, service, method, grpc_type)
            self._handles[(full_method, grpc_type)] = handle
        return handle

    def open_streams(self, service: str, method: str) -> int:
        return self.open_calls.get((service, method), 0)

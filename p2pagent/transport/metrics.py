"""Prometheus metrics: RPC counts and latency per method, process metrics, and a registry the
rest of the node adds its own gauges and counters to."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RpcMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.requests = Counter(
            "p2pagent_rpc_requests",
            "RPCs served, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "p2pagent_rpc_seconds",
            "RPC handling time, by method",
            ["method"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.dropped_payloads = Counter(
            "p2pagent_dropped_payloads",
            "Peer payloads dropped because they were malformed, oversized or of a wrong version",
            ["kind"],
            registry=self.registry,
        )

    def observe(self, method: str, code: str, seconds: float) -> None:
        # Once per RPC: the labelled children are looked up once per (method, code), not
        # through ``labels()`` (label validation and a lock) on every call.
        children = self._children.get((method, code))
        if children is None:
            children = self._children[(method, code)] = (
                self.requests.labels(method, code),
                self.latency.labels(method),
            )
        count, latency = children
        count.inc()
        latency.observe(seconds)

    def serve(self, host: str, port: int) -> None:
        """Serves /metrics over plain HTTP (the usual Prometheus scrape; no secrets in it)."""
        start_http_server(port, addr=host, registry=self.registry)

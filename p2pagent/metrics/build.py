"""``p2pagent_build_info``: the version a node runs, as labels on a constant 1 (the usual way
to join a version onto other series in PromQL)."""

from __future__ import annotations

import platform

import grpc
from prometheus_client import CollectorRegistry, Gauge

from p2pagent import __version__


def register_build_info(registry: CollectorRegistry) -> None:
    info = Gauge(
        "p2pagent_build_info",
        "Always 1; the labels say which build this node runs",
        ["version", "python_version", "grpc_version"],
        registry=registry,
    )
    info.labels(__version__, platform.python_version(), grpc.__version__).set(1)

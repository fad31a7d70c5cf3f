"""Replicated state metrics: keys, sync traffic by kind, open Watch streams."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.metrics_core import CounterMetricFamily, Metric

from p2pagent.metrics.families import gauge

#: The kinds of sync traffic: pushed deltas, and anti-entropy (digests and their repairs).
TRAFFIC_KINDS = ("delta", "anti_entropy")
DIRECTIONS = ("sent", "received")


@dataclass(frozen=True)
class StateSnapshot:
    keys: int
    #: (direction, kind) -> messages, and -> payload bytes.
    messages: Mapping[tuple[str, str], int]
    bytes: Mapping[tuple[str, str], int]
    watch_streams: int


def render(s: StateSnapshot) -> Iterator[Metric]:
    yield gauge("p2pagent_state_keys", "Live keys in this node's replica", s.keys)
    messages = CounterMetricFamily(
        "p2pagent_state_sync_messages",
        "State sync messages, by direction and kind (delta push or anti-entropy)",
        labels=["direction", "kind"],
    )
    payload = CounterMetricFamily(
        "p2pagent_state_sync_bytes",
        "State sync payload bytes, by direction and kind (delta push or anti-entropy)",
        labels=["direction", "kind"],
    )
    for direction in DIRECTIONS:
        for kind in TRAFFIC_KINDS:
            messages.add_metric([direction, kind], s.messages.get((direction, kind), 0))
            payload.add_metric([direction, kind], s.bytes.get((direction, kind), 0))
    yield messages
    yield payload
    yield gauge("p2pagent_state_watch_streams", "Watch streams open on this node", s.watch_streams)

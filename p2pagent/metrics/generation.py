"""Generation placement metrics: where this node's clients' sequences ran (here, relayed to a
peer, moved there after waiting) and what peers placed here (taken or refused)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, Metric

from p2pagent.inference.generation.relay_stats import RelayCounts

#: ``event`` label -> what it counts (the label values are RelayCounts' fields).
EVENTS = {
    "placed_locally": "ran here for a client of this node",
    "relayed_out": "ran on a peer for a client of this node (this node relayed the stream)",
    "moved": "waited here, then moved to a peer with room (also counted in relayed_out)",
    "relayed_in": "placed here by a peer",
    "refused": "a peer's placement this node refused (no room to start at once)",
    "failed_over": "a peer refused or failed before the first message; the next was tried",
}


def render(counts: RelayCounts) -> Iterator[Metric]:
    family = CounterMetricFamily(
        "p2pagent_generation_placements",
        "Generation sequences by where they were placed: "
        + "; ".join(f"{event}: {doc}" for event, doc in EVENTS.items()),
        labels=["event"],
    )
    values = counts.as_dict()
    for event in EVENTS:
        family.add_metric([event], float(values[event]))
    yield family

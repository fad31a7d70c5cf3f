"""Parameter averaging metrics, one series per training run this node takes part in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric


@dataclass(frozen=True)
class RunSnapshot:
    run: str
    members: int
    rounds: int
    last_round: int
    last_round_s: float
    phase_timeout_s: float
    bytes_sent: int
    bytes_received: int
    refused: int
    incomplete_rounds: int


Field = tuple[str, str, Callable[[RunSnapshot], float]]


def render(runs: list[RunSnapshot]) -> Iterator[Metric]:
    gauges: list[Field] = [
        ("members", "Participants of the run this node sees", lambda r: r.members),
        ("last_round", "Number of the last round this node finished", lambda r: r.last_round),
        ("last_round_seconds", "Wall time of the last round", lambda r: r.last_round_s),
        (
            "phase_timeout_seconds",
            "The adaptive deadline of one phase of a round, as now measured",
            lambda r: r.phase_timeout_s,
        ),
    ]
    counters: list[Field] = [
        ("rounds", "Averaging rounds this node finished", lambda r: r.rounds),
        (
            "incomplete_rounds",
            "Rounds that ended with a slice nobody averaged (it kept local values)",
            lambda r: r.incomplete_rounds,
        ),
        ("sent_bytes", "Parameter bytes this node sent to the run's peers", lambda r: r.bytes_sent),
        (
            "received_bytes",
            "Parameter bytes this node received from the run's peers",
            lambda r: r.bytes_received,
        ),
        (
            "refused_parts",
            "Parts refused (unknown run, wrong shape, non-finite values, a non-member)",
            lambda r: r.refused,
        ),
    ]
    for name, doc, value in gauges:
        family = GaugeMetricFamily(f"p2pagent_training_{name}", doc, labels=["run"])
        for r in runs:
            family.add_metric([r.run], float(value(r)))
        yield family
    for name, doc, value in counters:
        counter = CounterMetricFamily(f"p2pagent_training_{name}", doc, labels=["run"])
        for r in runs:
            counter.add_metric([r.run], float(value(r)))
        yield counter

"""The RPC metrics: plain counts per method, exposed as go-grpc-prometheus's families at
scrape time (transport/metrics.py)."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from p2pagent.transport.metrics import RpcMetrics

UNARY = ("p2pagent.v1.AgentService", "Infer", "unary")


def _samples(metrics: RpcMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("p2pagent_rpc")
        for s in family.samples
    }


def _labels(extra: dict[str, str] | None = None) -> tuple[tuple[str, str], ...]:
    labels = dict(zip(("grpc_service", "grpc_method", "grpc_type"), UNARY))
    return tuple(sorted({**labels, **(extra or {})}.items()))


def test_calls_are_counted_by_code_with_their_duration_buckets() -> None:
    metrics = RpcMetrics()
    infer = metrics.rpc("/p2pagent.v1.AgentService/Infer", "unary")
    assert metrics.rpc("/p2pagent.v1.AgentService/Infer", "unary") is infer
    for code, seconds in (("OK", 0.0005), ("OK", 0.002), ("NOT_FOUND", 100.0)):
        infer.started()
        infer.handled(code, seconds)
    infer.started()  # one still running
    got = _samples(metrics)
    assert got[("p2pagent_rpc_started_total", _labels())] == 4
    assert got[("p2pagent_rpc_handled_total", _labels({"grpc_code": "OK"}))] == 2
    assert got[("p2pagent_rpc_handled_total", _labels({"grpc_code": "NOT_FOUND"}))] == 1
    assert got[("p2pagent_rpc_in_flight", _labels())] == 1
    assert metrics.open_streams("p2pagent.v1.AgentService", "Infer") == 1
    bucket = "p2pagent_rpc_handling_seconds_bucket"
    assert got[(bucket, _labels({"le": "0.0005"}))] == 1  # a bound includes its value
    assert got[(bucket, _labels({"le": "0.0025"}))] == 2
    assert got[(bucket, _labels({"le": "60.0"}))] == 2
    assert got[(bucket, _labels({"le": "+Inf"}))] == 3
    assert got[("p2pagent_rpc_handling_seconds_count", _labels())] == 3
    assert abs(got[("p2pagent_rpc_handling_seconds_sum", _labels())] - 100.0025) < 1e-9


def test_streams_have_their_own_histogram() -> None:
    metrics = RpcMetrics()
    watch = metrics.rpc("/p2pagent.v1.AgentService/Watch", "server_stream")
    watch.started()
    watch.handled("CANCELLED", 3600.0)
    got = _samples(metrics)
    labels = (("grpc_method", "Watch"), ("grpc_service", "p2pagent.v1.AgentService"),
              ("grpc_type", "server_stream"))  # fmt: skip
    assert got[("p2pagent_rpc_stream_seconds_bucket", (*labels, ("le", "3600.0")))] == 1
    assert got[("p2pagent_rpc_stream_seconds_count", labels)] == 1
    assert not any(name.startswith("p2pagent_rpc_handling") for name, _ in got)

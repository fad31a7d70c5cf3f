"""The metric families render from their snapshots with the values and labels operators query,
pass ``promtool check metrics``, and the RPC metrics label calls by service, method and type."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from p2pagent.metrics import membership
from p2pagent.metrics.families import SnapshotCollector
from p2pagent.metrics.inference import batch_size_buckets
from p2pagent.transport.metrics import split_method
from tests.unit.metrics.sample import sample_registry


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_node_families_render_their_snapshot_values() -> None:
    samples = _samples(generate_latest(sample_registry().registry).decode())
    assert samples[("p2pagent_members", frozenset({("state", "dead")}))] == 1
    # A state nobody is in is still a series, at 0: an alert on it sees 0, not "no data".
    assert samples[("p2pagent_members", frozenset({("state", "suspect")}))] == 0
    assert samples[("p2pagent_membership_suspicions_total", frozenset())] == 2
    assert samples[("p2pagent_membership_awareness", frozenset())] == 3
    assert samples[("p2pagent_membership_late_ticks_total", frozenset())] == 6
    assert samples[("p2pagent_membership_corrections_total", frozenset())] == 7
    assert samples[("p2pagent_state_keys", frozenset())] == 7
    sent_delta = frozenset({("direction", "sent"), ("kind", "delta")})
    assert samples[("p2pagent_state_sync_bytes_total", sent_delta)] == 900
    assert samples[("p2pagent_state_watch_streams", frozenset())] == 2
    assert samples[("p2pagent_models_pull_failures_total", frozenset())] == 1
    assert samples[("p2pagent_tasks_backlog_seconds", frozenset())] == 12.5
    assert samples[("p2pagent_tasks_leases_lost_total", frozenset())] == 1
    model = frozenset({("model", "m")})
    assert samples[("p2pagent_inference_batch_size_bucket", model | {("le", "1.0")})] == 2
    assert samples[("p2pagent_inference_batch_size_bucket", model | {("le", "4.0")})] == 2
    assert samples[("p2pagent_inference_batch_size_bucket", model | {("le", "8.0")})] == 5
    assert samples[("p2pagent_inference_batch_size_count", model)] == 5
    assert samples[("p2pagent_inference_batch_size_sum", model)] == 26
    assert samples[("p2pagent_inference_queue_seconds_sum", model)] == 0.25
    assert samples[("p2pagent_inference_queue_seconds_count", model)] == 5
    run = frozenset({("run", "digits")})
    assert samples[("p2pagent_training_members", run)] == 4
    assert samples[("p2pagent_training_rounds_total", run)] == 12
    assert samples[("p2pagent_training_incomplete_rounds_total", run)] == 2
    assert samples[("p2pagent_training_sent_bytes_total", run)] == 4096
    assert samples[("p2pagent_training_phase_timeout_seconds", run)] == 2.5
    assert samples[("p2pagent_inference_tokens_total", model | {("kind", "real")})] == 300
    assert samples[("p2pagent_inference_tokens_total", model | {("kind", "padding")})] == 60
    placements = {
        dict(labels)["event"]: value
        for (name, labels), value in samples.items()
        if name == "p2pagent_generation_placements_total"
    }
    assert placements == {
        "placed_locally": 9,
        "relayed_out": 4,
        "moved": 3,
        "relayed_in": 2,
        "refused": 1,
        "failed_over": 0,
    }
    builds = [k for k in samples if k[0] == "p2pagent_build_info"]
    assert len(builds) == 1 and dict(builds[0][1])["version"]


def test_rpc_metrics_split_the_method_and_keep_streams_out_of_unary_buckets() -> None:
    assert split_method("/p2pagent.v1.AgentService/Status") == (
        "p2pagent.v1.AgentService",
        "Status",
    )
    samples = _samples(generate_latest(sample_registry().registry).decode())
    watch = frozenset(
        {
            ("grpc_service", "p2pagent.v1.AgentService"),
            ("grpc_method", "Watch"),
            ("grpc_type", "server_stream"),
        }
    )
    assert samples[("p2pagent_rpc_started_total", watch)] == 2
    assert samples[("p2pagent_rpc_handled_total", watch | {("grpc_code", "OK")})] == 1
    assert samples[("p2pagent_rpc_in_flight", watch)] == 1
    # A two-hour stream lands in a finite bucket of the stream histogram...
    assert samples[("p2pagent_rpc_stream_seconds_bucket", watch | {("le", "14400.0")})] == 1
    assert samples[("p2pagent_rpc_stream_seconds_bucket", watch | {("le", "3600.0")})] == 0
    # ...and unary calls have their own histogram.
    assert not any(
        k[0].startswith("p2pagent_rpc_handling_seconds") and k[1] >= watch for k in samples
    )
    status = frozenset(
        {
            ("grpc_service", "p2pagent.v1.AgentService"),
            ("grpc_method", "Status"),
            ("grpc_type", "unary"),
        }
    )
    assert samples[("p2pagent_rpc_handling_seconds_bucket", status | {("le", "0.0025")})] == 1


def test_a_part_not_started_reports_no_series_rather_than_zeros() -> None:
    reg = CollectorRegistry()
    reg.register(SnapshotCollector(lambda: None, membership.render))
    assert "p2pagent_members" not in generate_latest(reg).decode()


def test_batch_size_buckets_are_cumulative() -> None:
    assert batch_size_buckets([(3, 2), (600, 1)])[:3] == [("1.0", 0), ("2.0", 0), ("4.0", 2)]
    assert batch_size_buckets([(3, 2), (600, 1)])[-2:] == [("512.0", 2), ("+Inf", 3)]


def test_promtool_accepts_the_exposition() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus; CI installs it)")
    text = generate_latest(sample_registry().registry)
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()

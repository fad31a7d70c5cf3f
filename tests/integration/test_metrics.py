"""A real daemon's /metrics: every family a dashboard or alert needs is there with the node's
live values, RPCs are labelled by service, method and type, other paths answer 404, and
``promtool check metrics`` accepts the exposition."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from p2pagent._proto import agent_pb2_grpc
from p2pagent.client import Client
from p2pagent.identity import material as tls
from p2pagent.testing.daemon import Daemon, free_port
from p2pagent.training.api import average
from p2pagent.transport.channels import channel_options

#: Families (as exposed, counters with ``_total``) that must be present on a started node.
EXPECTED = {
    "p2pagent_build_info",
    "p2pagent_members",
    "p2pagent_membership_probes",
    "p2pagent_membership_suspicions",
    "p2pagent_membership_refutations",
    "p2pagent_state_keys",
    "p2pagent_state_sync_messages",
    "p2pagent_state_sync_bytes",
    "p2pagent_state_watch_streams",
    "p2pagent_models_versions_held",
    "p2pagent_models_pulls",
    "p2pagent_models_pulled_bytes",
    "p2pagent_models_chunk_verification_failures",
    "p2pagent_tasks_queued",
    "p2pagent_tasks_backlog_seconds",
    "p2pagent_tasks_completed",
    "p2pagent_tasks_stolen_in",
    "p2pagent_tasks_stolen_out",
    "p2pagent_tasks_steal_requests",
    "p2pagent_tasks_leases_lost",
    "p2pagent_rpc_started",
    "p2pagent_rpc_handled",
    "p2pagent_rpc_handling_seconds",
    "p2pagent_rpc_stream_seconds",
    "p2pagent_dropped_payloads",
    "p2pagent_generation_placements",
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[Daemon]:
    metrics = f"127.0.0.1:{free_port()}"
    d = Daemon("n1", certs_dir, tmp_path_factory.mktemp("m") / "n1", args=["--metrics", metrics])
    d.env["METRICS_ADDRESS"] = metrics
    d.start()
    try:
        yield d
    finally:
        d.stop()


def _get(d: Daemon, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{d.env['METRICS_ADDRESS']}{path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def test_metrics_show_the_node(node: Daemon, certs_dir: Path) -> None:
    async with Client.from_certs([node.address], certs_dir) as client:
        await client.put("ns", "k", b"v")
        await client.status()
    status, body = _get(node, "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert set(families) >= EXPECTED, EXPECTED - set(families)
    alive = [s for s in families["p2pagent_members"].samples if s.labels["state"] == "alive"]
    assert alive[0].value == 1
    assert families["p2pagent_state_keys"].samples[0].value >= 1
    handled = {
        (s.labels["grpc_service"], s.labels["grpc_method"], s.labels["grpc_type"])
        for s in families["p2pagent_rpc_handled"].samples
    }
    assert ("p2pagent.v1.AgentService", "Status", "unary") in handled, handled


async def test_metrics_show_a_training_run(node: Daemon, certs_dir: Path) -> None:
    """A run of one member (this node alone) averages at once; its series appear by run."""
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}

    def one_round() -> None:
        m = tls.load(tls.TLSPaths.in_dir(certs_dir, "n1"))  # a run's members are nodes
        creds = grpc.ssl_channel_credentials(m.ca_pem, m.key_pem, m.cert_pem)
        options = channel_options(m.cluster, 64 << 20)
        with grpc.secure_channel(node.address, creds, options=options) as channel:
            average(agent_pb2_grpc.AgentServiceStub(channel), "solo", params, 10.0, timeout=60)

    await asyncio.to_thread(one_round)
    _status, body = _get(node, "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    rounds = {s.labels["run"]: s.value for s in families["p2pagent_training_rounds"].samples}
    assert rounds == {"solo": 1.0}
    sent = families["p2pagent_training_members"].samples
    assert [(s.labels["run"], s.value) for s in sent] == [("solo", 1.0)]


@pytest.mark.parametrize("path", ["/", "/metricsx", "/favicon.ico", "/metrics/../x"])
def test_other_paths_are_not_found(node: Daemon, path: str) -> None:
    status, _body = _get(node, path)
    assert status == 404


def test_promtool_accepts_a_live_node(node: Daemon) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus; CI installs it)")
    _status, body = _get(node, "/metrics")
    done = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()

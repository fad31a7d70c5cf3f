"""A node's part in training runs over its life: each run it joins carries a member tag, and
tags are bounded, so the runs it averaged in longest ago are left to make room for new ones."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from p2pagent._proto import agent_pb2, agent_pb2_grpc
from p2pagent.identity import material as tls
from p2pagent.testing.daemon import Daemon
from p2pagent.training.api import average
from p2pagent.transport.channels import channel_options


@pytest.fixture(scope="module")
def node(certs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon("n1", certs_dir, tmp_path_factory.mktemp("runs") / "n1")
    d.start()
    try:
        yield d
    finally:
        d.stop()


async def test_a_node_joins_more_runs_than_its_tags_hold_at_once(
    node: Daemon, certs_dir: Path
) -> None:
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    runs = [f"experiment-{i:02d}-with-a-long-name" for i in range(12)]

    def rounds() -> list[str]:
        m = tls.load(tls.TLSPaths.in_dir(certs_dir, "n1"))  # a run's members are nodes
        creds = grpc.ssl_channel_credentials(m.ca_pem, m.key_pem, m.cert_pem)
        with grpc.secure_channel(
            node.address, creds, options=channel_options(m.cluster, 64 << 20)
        ) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            for run in runs:  # one member (this node alone): each round ends at once
                average(stub, run, params, 10.0, timeout=60)
            status = stub.TrainStatus(agent_pb2.TrainStatusRequest(), timeout=10)
            return [r.run for r in status.runs]

    held = await asyncio.to_thread(rounds)
    # Twelve runs' tags do not fit in membership.max_tags_bytes at once: the oldest were
    # left, the newest kept.
    assert runs[-1] in held and runs[0] not in held
    assert 0 < len(held) < len(runs)
    assert held == sorted(held) and set(held) <= set(runs)

"""A revoked identity's stream parked in grpc's write (its client stopped reading, so HTTP/2
flow control holds the data) is ended, not only marked (issue 21, item 6): the node shuts that
client's connection down after a short grace, and the client's call ends with an error instead
of waiting for the status behind data it never reads."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from p2pagent._proto import agent_pb2, agent_pb2_grpc
from p2pagent.identity import certs
from p2pagent.identity.spiffe import Role
from p2pagent.testing.channels import aio_channel
from p2pagent.testing.daemon import Daemon

MIB = 1 << 20


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[Daemon]:
    # A Watch budget far over what is written: the stream must stay open, parked, until the
    # revocation (a budget overrun would end it for another reason).
    env = {"P2PAGENT_STATE__WATCH_BUFFER_BYTES": str(256 * MIB)}
    d = Daemon("n6", certs_dir, tmp_path_factory.mktemp("parked") / "n6", env=env).start()
    try:
        yield d
    finally:
        d.kill()
    assert "Traceback" not in d.log_path.read_text(), d.log_tail(60)


async def test_a_revoked_stream_parked_in_a_write_is_ended(node: Daemon, certs_dir: Path) -> None:
    if not (certs_dir / "parker.crt").exists():
        certs.issue(certs_dir, "parker", Role.CLIENT)
    value = os.urandom(1_000_000)
    async with (
        aio_channel(node.address, certs_dir, "parker", own_subchannel=True) as parker,
        aio_channel(node.address, certs_dir, "client", own_subchannel=True) as writer,
        aio_channel(node.address, certs_dir, "admin", own_subchannel=True) as admin,
    ):
        watch = agent_pb2_grpc.AgentServiceStub(parker).Watch(
            agent_pb2.WatchRequest(namespace="parked"), timeout=120
        )
        await asyncio.sleep(1.0)  # open and registered on the node (it sends nothing yet)
        put = agent_pb2_grpc.AgentServiceStub(writer).Put
        for i in range(24):  # 24 MB the watcher never reads: its writes park
            await put(
                agent_pb2.PutRequest(namespace="parked", key=f"k{i}", value=value), timeout=30
            )
        await asyncio.sleep(1.0)
        uri = "spiffe://test/client/parker"  # conftest's cluster is 'test'
        await agent_pb2_grpc.AgentServiceStub(admin).Revoke(
            agent_pb2.RevokeRequest(identity=uri, reason="gone"), timeout=10
        )
        # Ended while parked, so only marked; cut once still parked after the grace (without
        # the cut this line never comes and the call hangs until its deadline).
        deadline = time.monotonic() + 30
        while "shut down the connection of" not in node.log_path.read_text():
            assert time.monotonic() < deadline, node.log_tail(30)
            await asyncio.sleep(0.2)
        # The client's call ends (after what it had buffered) instead of hanging.
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async with asyncio.timeout(30):
                async for _ in watch:
                    pass
        assert e.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.INTERNAL,
        ), e.value

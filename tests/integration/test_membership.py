"""Membership's and state sync's bad-input rules against one real daemon: malformed,
wrong-version and impersonating gossip or sync messages are dropped with their specific
status and counted, the daemon keeps running (and its replica unchanged), and oversized or
reserved tags are refused at startup in one line."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from p2pagent._proto import agent_pb2, agent_pb2_grpc, common_pb2, peer_pb2_grpc
from p2pagent.membership import codec
from p2pagent.membership.messages import Kind, Message
from p2pagent.testing.channels import aio_channel
from p2pagent.testing.daemon import Daemon, free_port


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[Daemon]:
    metrics = f"127.0.0.1:{free_port()}"
    d = Daemon("n6", certs_dir, tmp_path_factory.mktemp("m") / "n6", args=["--metrics", metrics])
    d.env["METRICS_ADDRESS"] = metrics  # remembered for the test below
    d.start()
    try:
        yield d
    finally:
        d.kill()


def _dropped(d: Daemon, kind: str) -> float:
    with urllib.request.urlopen(f"http://{d.env['METRICS_ADDRESS']}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith("p2pagent_dropped_payloads_total") and f'kind="{kind}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize(
    ("envelope", "code", "kind"),
    [
        (
            common_pb2.Envelope(version=codec.VERSION, payload=b"\xc1garbage"),
            "INVALID_ARGUMENT",
            "membership_malformed",
        ),
        (common_pb2.Envelope(version=99, payload=b""), "FAILED_PRECONDITION", "membership_version"),
        (
            common_pb2.Envelope(
                version=codec.VERSION, payload=codec.encode(Message(Kind.PING, "n1", "x:1", seq=1))
            ),
            "INVALID_ARGUMENT",
            "membership_impersonation",
        ),
    ],
)
async def test_bad_gossip_is_refused_counted_and_survived(
    node: Daemon, certs_dir: Path, envelope: common_pb2.Envelope, code: str, kind: str
) -> None:
    before = _dropped(node, kind)
    async with aio_channel(node.address, certs_dir, "n7", max_mib=4) as ch:
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await peer_pb2_grpc.PeerServiceStub(ch).Gossip(envelope, timeout=5)
            assert e.value.code().name == code
    assert _dropped(node, kind) == before + 3
    async with aio_channel(node.address, certs_dir, "client", max_mib=4) as ch:
        status = await agent_pb2_grpc.AgentServiceStub(ch).Status(
            agent_pb2.StatusRequest(), timeout=5
        )
    assert status.name == "n6"
    # Logged once per peer per minute, not once per message.
    assert node.log_tail(200).count("dropped membership payload from n7") <= 3


async def test_a_valid_ping_from_a_peer_is_acked(node: Daemon, certs_dir: Path) -> None:
    ping = Message(Kind.PING, "n7", "127.0.0.1:1", seq=42, target="n6")
    env = common_pb2.Envelope(version=codec.VERSION, payload=codec.encode(ping))
    async with aio_channel(node.address, certs_dir, "n7", max_mib=4) as ch:
        reply = await peer_pb2_grpc.PeerServiceStub(ch).Gossip(env, timeout=5)
    ack = codec.decode(reply.payload)
    assert (ack.kind, ack.seq, ack.src) == (Kind.ACK, 42, "n6")


async def test_a_client_identity_cannot_gossip(node: Daemon, certs_dir: Path) -> None:
    env = common_pb2.Envelope(version=codec.VERSION, payload=b"")
    async with aio_channel(node.address, certs_dir, "client", max_mib=4) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await peer_pb2_grpc.PeerServiceStub(ch).Gossip(env, timeout=5)
    assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("tag", "needle"),
    [(f"big={'x' * 600}", "max_tags_bytes"), ("version=1", "set by the node itself")],
)
def test_bad_tags_are_refused_at_startup(
    tmp_path: Path, certs_dir: Path, tag: str, needle: str
) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "p2pagent.cli.daemon", "--name", "n8", "--certs", str(certs_dir),
         "--data", str(tmp_path), "--listen", f"127.0.0.1:{free_port()}", "--tag", tag],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr


def _state_payload(sender: str) -> bytes:
    from p2pagent.state.codec import encode_message
    from p2pagent.state.messages import DigestMessage

    return encode_message(DigestMessage(sender, {}, {}, b"", False))


@pytest.mark.parametrize(
    ("envelope", "code", "kind"),
    [
        (common_pb2.Envelope(version=1, payload=b"\x93\x01garbage"), "INVALID_ARGUMENT",
         "state_malformed"),
        (common_pb2.Envelope(version=99, payload=b""), "FAILED_PRECONDITION", "state_version"),
        (common_pb2.Envelope(version=1, payload=_state_payload("n1")), "INVALID_ARGUMENT",
         "state_impersonation"),
    ],
)  # fmt: skip
async def test_bad_state_sync_is_refused_counted_and_leaves_the_replica_intact(
    node: Daemon, certs_dir: Path, envelope: common_pb2.Envelope, code: str, kind: str
) -> None:
    async with aio_channel(node.address, certs_dir, "client", max_mib=4) as ch:
        agent = agent_pb2_grpc.AgentServiceStub(ch)
        await agent.Put(agent_pb2.PutRequest(namespace="keep", key="k", value=b"v"), timeout=5)
        digest = (await agent.Status(agent_pb2.StatusRequest(), timeout=5)).state_digest
    before = _dropped(node, kind)
    async with aio_channel(node.address, certs_dir, "n7", max_mib=4) as ch:
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                async for _answer in peer_pb2_grpc.PeerServiceStub(ch).Replicate(
                    envelope, timeout=5
                ):
                    pass
            assert e.value.code().name == code
    assert _dropped(node, kind) == before + 3
    async with aio_channel(node.address, certs_dir, "client", max_mib=4) as ch:
        status = await agent_pb2_grpc.AgentServiceStub(ch).Status(
            agent_pb2.StatusRequest(), timeout=5
        )
    assert status.state_digest == digest  # nothing merged, nothing corrupted

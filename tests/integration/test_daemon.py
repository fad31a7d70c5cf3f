"""One real p2pagentd process: mutual TLS refusals, health, reflection, graceful shutdown,
and configuration errors that end in one clear line and exit status 2."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from p2pagent._proto import agent_pb2, agent_pb2_grpc, common_pb2, peer_pb2_grpc
from p2pagent.testing.channels import identity_credentials
from p2pagent.testing.daemon import Daemon, free_port
from p2pagent.transport import reflection
from p2pagent.transport.channels import channel_options


def _channel(address: str, creds: grpc.ChannelCredentials) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(address, creds, options=channel_options("test", 4 << 20))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[Daemon]:
    d = Daemon("n1", certs_dir, tmp_path_factory.mktemp("data") / "n1").start()
    try:
        yield d
    finally:
        d.kill()


async def test_client_certificate_reaches_agent_status(node: Daemon, certs_dir: Path) -> None:
    async with _channel(node.address, identity_credentials(certs_dir, "client")) as ch:
        resp = await agent_pb2_grpc.AgentServiceStub(ch).Status(
            agent_pb2.StatusRequest(), timeout=5
        )
    assert resp.name == "n1"
    assert resp.identity == "spiffe://test/node/n1"
    assert resp.address == node.address


async def test_no_client_certificate_fails_the_handshake(node: Daemon, certs_dir: Path) -> None:
    creds = grpc.ssl_channel_credentials((certs_dir / "ca.crt").read_bytes())
    async with _channel(node.address, creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await agent_pb2_grpc.AgentServiceStub(ch).Status(agent_pb2.StatusRequest(), timeout=5)
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_certificate_from_another_ca_fails_the_handshake(
    node: Daemon, certs_dir: Path, foreign_certs_dir: Path
) -> None:
    # Trusts the real CA (so the server is accepted) but presents a foreign client cert.
    creds = grpc.ssl_channel_credentials(
        (certs_dir / "ca.crt").read_bytes(),
        (foreign_certs_dir / "client.key").read_bytes(),
        (foreign_certs_dir / "client.crt").read_bytes(),
    )
    async with _channel(node.address, creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await agent_pb2_grpc.AgentServiceStub(ch).Status(agent_pb2.StatusRequest(), timeout=5)
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_expired_client_certificate_fails_the_handshake(
    node: Daemon, expired_certs_dir: Path
) -> None:
    async with _channel(node.address, identity_credentials(expired_certs_dir, "client")) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await agent_pb2_grpc.AgentServiceStub(ch).Status(agent_pb2.StatusRequest(), timeout=5)
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_client_identity_calling_peer_is_permission_denied(
    node: Daemon, certs_dir: Path
) -> None:
    async with _channel(node.address, identity_credentials(certs_dir, "client")) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await peer_pb2_grpc.PeerServiceStub(ch).Gossip(common_pb2.Envelope(), timeout=5)
    assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "needs role node" in (e.value.details() or "")
    assert "has role client" in (e.value.details() or "")


async def test_health_and_reflection_answer_a_plain_grpc_client(
    node: Daemon, certs_dir: Path
) -> None:
    async with _channel(node.address, identity_credentials(certs_dir, "client")) as ch:
        health = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="p2pagent.v1.AgentService"), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stream = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = set()
        async for resp in stream:
            names |= {s.name for s in resp.list_services_response.service}
    assert {"p2pagent.v1.AgentService", "p2pagent.v1.PeerService", "grpc.health.v1.Health"} <= names
    assert {
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


async def test_reflection_v1_answers_a_client_that_speaks_only_v1(
    node: Daemon, certs_dir: Path
) -> None:
    """The v1 messages come from the v1 descriptor (grpc.reflection.v1.*), not v1alpha's."""
    pool = descriptor_pool.DescriptorPool()
    reflection.register_v1_file(pool)
    request_cls = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
    )
    response_cls = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
    )
    async with _channel(node.address, identity_credentials(certs_dir, "client")) as ch:
        call = ch.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        requests = [
            request_cls(list_services=""),
            request_cls(file_containing_symbol="p2pagent.v1.AgentService"),
            request_cls(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
            request_cls(file_containing_symbol="no.such.Symbol"),
        ]
        answers = [r async for r in call(iter(requests), timeout=10)]
    assert len(answers) == 4
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"p2pagent.v1.AgentService", "grpc.reflection.v1.ServerReflection"} <= names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in answers[1].file_descriptor_response.file_descriptor_proto
    ]
    assert "p2pagent/v1/agent.proto" in {f.name for f in files}
    own = answers[2].file_descriptor_response.file_descriptor_proto
    assert reflection.V1_FILE in {
        descriptor_pb2.FileDescriptorProto.FromString(b).name for b in own
    }
    assert answers[3].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_sigterm_stops_gracefully_with_status_0(tmp_path: Path, certs_dir: Path) -> None:
    d = Daemon("n2", certs_dir, tmp_path / "n2").start()
    try:
        d.signal(signal.SIGTERM)
        assert d.proc is not None
        assert d.proc.wait(20) == 0
        assert "stopping" in d.log_tail()
    finally:
        d.kill()


def _run_daemon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pagent.cli.daemon", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _assert_one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("p2pagentd: error:")
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_certificate_is_one_line(tmp_path: Path, certs_dir: Path) -> None:
    r = _run_daemon("--name", "ghost", "--certs", str(certs_dir), "--data", str(tmp_path))
    _assert_one_line_error(r, "ghost.crt does not exist")


def test_unreadable_key_is_one_line(tmp_path: Path, certs_dir: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnope\n")
    r = _run_daemon(
        "--name", "n3", "--ca", str(certs_dir / "ca.crt"), "--cert", str(certs_dir / "n3.crt"),
        "--key", str(bad), "--data", str(tmp_path),
    )  # fmt: skip
    _assert_one_line_error(r, "not an unencrypted PEM key")


def test_port_in_use_is_one_line(node: Daemon, tmp_path: Path, certs_dir: Path) -> None:
    r = _run_daemon(
        "--name", "n4", "--certs", str(certs_dir), "--data", str(tmp_path), "--listen",
        node.address,
    )  # fmt: skip
    _assert_one_line_error(r, f"cannot listen on {node.address}")


def test_malformed_address_is_one_line(tmp_path: Path, certs_dir: Path) -> None:
    r = _run_daemon("--name", "n4", "--certs", str(certs_dir), "--seeds", "127.0.0.1:1,nohost")
    _assert_one_line_error(r, "malformed seed address 'nohost'")


def test_unknown_config_key_is_one_line(tmp_path: Path, certs_dir: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text(f'name = "n4"\ncerts = "{certs_dir}"\nlisten_port = 1\n')
    r = _run_daemon("--config", str(cfg))
    _assert_one_line_error(r, "unknown key 'listen_port'")


def test_client_certificate_cannot_run_a_daemon(tmp_path: Path, certs_dir: Path) -> None:
    port = free_port()
    r = _run_daemon(
        "--name", "client", "--certs", str(certs_dir), "--data", str(tmp_path), "--listen",
        f"127.0.0.1:{port}",
    )  # fmt: skip
    _assert_one_line_error(r, "--role node")

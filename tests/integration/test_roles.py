"""Roles, streams and connections against one real daemon (issue 21 items 1, 6, 9): a client
cannot publish, delete or revoke and is told which role it needs; a publisher publishes; a
certificate with an unknown role is refused at the door; a Watch that stops reading is ended
with RESOURCE_EXHAUSTED and the seq to resume from while the node's memory stays near its
budget; the per-identity stream cap, the certificate expiry of an open stream, and the TLS
handshake, idle-connection and per-connection stream limits."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest

from p2pagent._proto import agent_pb2, agent_pb2_grpc
from p2pagent.client import Client
from p2pagent.errors import PermissionDenied
from p2pagent.identity import certs
from p2pagent.identity.spiffe import Role
from p2pagent.testing.channels import aio_channel, channel
from p2pagent.testing.daemon import Daemon

MIB = 1 << 20
WATCH_BUDGET = 4 * MIB
STREAM_CAP = 4
PER_CONNECTION = 3
HANDSHAKE_S = 1.0
IDLE_S = 2.0


def _issue(certs_dir: Path, name: str, role: Role, **kw: Any) -> None:
    if not (certs_dir / f"{name}.crt").exists():
        certs.issue(certs_dir, name, role, **kw)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[Daemon]:
    d = Daemon(
        "n5",
        certs_dir,
        tmp_path_factory.mktemp("roles") / "n5",
        env={
            "P2PAGENT_STATE__WATCH_BUFFER_BYTES": str(WATCH_BUDGET),
            "P2PAGENT_TRANSPORT__MAX_STREAMS_PER_IDENTITY": str(STREAM_CAP),
            "P2PAGENT_TRANSPORT__MAX_CONCURRENT_STREAMS": str(PER_CONNECTION),
            "P2PAGENT_TRANSPORT__HANDSHAKE_TIMEOUT": str(HANDSHAKE_S),
            "P2PAGENT_TRANSPORT__MAX_CONNECTION_IDLE": str(IDLE_S),
        },
    ).start()
    try:
        yield d
    finally:
        d.kill()
    assert "Traceback" not in d.log_path.read_text(), d.log_tail(60)


def _error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


def _rss(node: Daemon) -> int:
    assert node.proc is not None
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# ---- roles -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    subprocess.run(
        [sys.executable, "-m", "p2pagent.inference.demo_model", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out


def _ctl(node: Daemon, certs_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    conn = ["--target", node.address, "--certs", str(certs_dir)]
    return subprocess.run(
        [sys.executable, "-m", "p2pagent.cli.ctl", *args, *conn],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


async def test_every_refused_upload_reaches_the_client_with_its_reason(
    node: Daemon, certs_dir: Path, demo: Path
) -> None:
    # A client that writes into a call the node already ended loses the reason to grpc.aio's
    # "Internal error from Core" (grpc/grpc#36066), once in ten or so: the uploader sends its
    # bytes only on the node's cue, so a refusal at the door keeps its reason. The demo model
    # is six upload pieces: the window the old race had.
    async with Client.from_certs([node.address], certs_dir) as mesh:
        for _ in range(12):
            with pytest.raises(PermissionDenied, match="needs role publisher"):
                await mesh.publish(demo / "demo.torchscript.pt", "refused")


def test_a_client_cannot_publish_delete_or_revoke_and_is_told_the_role_it_needs(
    node: Daemon, certs_dir: Path, demo: Path
) -> None:
    model = str(demo / "demo.torchscript.pt")
    r = _ctl(node, certs_dir, "models", "push", model, "--name", "mine")  # as 'client'
    assert r.returncode != 0
    assert "needs role publisher" in r.stderr and "has role client" in r.stderr, r.stderr

    r = _ctl(node, certs_dir, "models", "push", model, "--name", "mine", "--identity",
             "publisher", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    with channel(node.address, certs_dir, "client", own_subchannel=True) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        listed = stub.ListModels(agent_pb2.ListModelsRequest(name="mine"), timeout=10).versions
        assert len(listed) == 1  # a client lists what a publisher published
        err = _error(
            lambda: stub.DeleteModel(agent_pb2.DeleteModelRequest(name="mine"), timeout=10)
        )
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "needs role publisher" in err.details() and "has role client" in err.details()
        revoke = agent_pb2.RevokeRequest(identity="spiffe://test/client/someone")
        err = _error(lambda: stub.Revoke(revoke, timeout=10))
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "needs role admin" in err.details() and "has role client" in err.details()
    with channel(node.address, certs_dir, "publisher", own_subchannel=True) as ch:
        err = _error(lambda: agent_pb2_grpc.AgentServiceStub(ch).Revoke(revoke, timeout=10))
        assert "needs role admin" in err.details() and "has role publisher" in err.details()
    r = _ctl(node, certs_dir, "models", "rm", "mine", "--identity", "publisher")
    assert r.returncode == 0, r.stderr


def test_a_certificate_with_an_unknown_role_is_refused_at_the_door(
    node: Daemon, certs_dir: Path
) -> None:
    # certs.issue takes a Role; a stand-in with another value writes what a foreign tool
    # could: a certificate from our CA whose SPIFFE URI names a role we do not know.
    root = cast(Role, SimpleNamespace(value="root"))
    _issue(certs_dir, "intruder", root)
    with channel(node.address, certs_dir, "intruder", own_subchannel=True) as ch:
        err = _error(lambda: agent_pb2_grpc.AgentServiceStub(ch).Status(agent_pb2.StatusRequest(),
                                                                 timeout=10))  # fmt: skip
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "unknown role 'root'" in err.details() and "--role" in err.details()


# ---- streams -------------------------------------------------------------------------------


def test_a_watch_that_stops_reading_is_ended_with_the_seq_to_resume_from_and_costs_its_budget(
    node: Daemon, certs_dir: Path
) -> None:
    value = os.urandom(1_000_000)
    with channel(node.address, certs_dir, "client", own_subchannel=True) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)

        def write(n: int, key: str) -> None:
            for i in range(n):
                req = agent_pb2.PutRequest(namespace="big", key=key, value=value[i:] + value[:i])
                stub.Put(req, timeout=30)

        # The same amount written with nobody watching: what the writes cost by themselves
        # (delta buffer, allocator), so the watcher's share is what is left.
        write(100, "unwatched")
        time.sleep(1.0)
        before = _rss(node)
        watch = stub.Watch(agent_pb2.WatchRequest(namespace="big", prefix="k"), timeout=120)
        write(100, "k")  # ~100 MB while the watcher reads nothing
        time.sleep(1.0)
        grown = _rss(node) - before
        got: list[agent_pb2.WatchResponse] = []
        with pytest.raises(grpc.RpcError) as e:
            got.extend(watch)
    err = e.value
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert "state.watch_buffer_bytes" in err.details()
    resume = dict(err.trailing_metadata())["p2pagent-resume-from-seq"]
    assert got and resume == str(got[-1].seq), (resume, [c.seq for c in got])
    assert f"from_seq={resume}" in err.details()
    assert len(got) < 100  # it was cut off, not fed all 100 MB
    # Without the budget it grew by ~100 MB. With it, runs of this file grew -4 to +12 MiB,
    # and one in eight (CI, quiet) 45 MiB: the allocator keeps some of the 100 MB of puts
    # (1 MB values) resident. The bound sits between those; the issue's own target (budget
    # + 10 %) is measured by bench/streams.py, not here.
    assert grown < WATCH_BUDGET + 64 * MIB, f"RSS grew {grown / MIB:.0f} MiB"
    # Resuming from the seq it was given delivers the changes it missed.
    with channel(node.address, certs_dir, "client", own_subchannel=True) as ch:
        again = agent_pb2_grpc.AgentServiceStub(ch).Watch(
            agent_pb2.WatchRequest(namespace="big", prefix="k", from_seq=int(resume)), timeout=30
        )
        first = next(again)
        assert first.seq > int(resume) and first.key == "k"
        again.cancel()


async def test_streams_per_identity_are_capped_with_a_refusal_naming_the_knob(
    node: Daemon, certs_dir: Path
) -> None:
    _issue(certs_dir, "streamer", Role.CLIENT)
    # Asyncio channels: the blocking client delays new calls while several of its streams sit
    # unread, which would hide what the node does.
    async with (
        aio_channel(node.address, certs_dir, "streamer", own_subchannel=True) as a,
        aio_channel(node.address, certs_dir, "streamer", own_subchannel=True) as b,
    ):
        req = agent_pb2.WatchRequest(namespace="cap")
        # Per connection at most PER_CONNECTION calls: spread over two connections.
        held = [agent_pb2_grpc.AgentServiceStub(a if i % 2 else b).Watch(req, timeout=60)
                for i in range(STREAM_CAP)]  # fmt: skip
        await asyncio.sleep(1.0)  # each one is open on the node
        over = agent_pb2_grpc.AgentServiceStub(a).Watch(req, timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await over.read()
        assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"max_streams_per_identity = {STREAM_CAP}" in (e.value.details() or "")
        # Others are not affected.
        async with aio_channel(node.address, certs_dir, "client", own_subchannel=True) as other:
            w = agent_pb2_grpc.AgentServiceStub(other).Watch(req, timeout=30)
            await asyncio.sleep(1.0)
            await agent_pb2_grpc.AgentServiceStub(other).Put(
                agent_pb2.PutRequest(namespace="cap", key="x", value=b"1"), timeout=10
            )
            assert (await w.read()).key == "x"
            w.cancel()
        held.pop().cancel()  # the last one went over a
        await asyncio.sleep(1.0)
        again = agent_pb2_grpc.AgentServiceStub(a).Watch(req, timeout=30)
        await asyncio.sleep(1.0)
        await agent_pb2_grpc.AgentServiceStub(a).Put(
            agent_pb2.PutRequest(namespace="cap", key="y", value=b"1"), timeout=10
        )
        assert (await again.read()).key == "y"  # a slot was free again
        for w in [*held, again]:
            w.cancel()


def test_a_stream_ends_when_the_certificate_that_opened_it_expires(
    node: Daemon, certs_dir: Path
) -> None:
    # Valid for one day, starting one day minus 8 seconds ago: it expires in 8 s.
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1) + dt.timedelta(seconds=8)
    certs.issue(certs_dir, "shortlived", Role.CLIENT, days=1, not_before=start, force=True)
    with channel(node.address, certs_dir, "shortlived", own_subchannel=True) as ch:
        watch = agent_pb2_grpc.AgentServiceStub(ch).Watch(
            agent_pb2.WatchRequest(namespace="exp"), timeout=60
        )
        watch.initial_metadata()
        t0 = time.monotonic()
        err = _error(lambda: list(watch))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "expired" in err.details()
    assert time.monotonic() - t0 < 50  # ended by the expiry, not by the call's deadline


# ---- connections ---------------------------------------------------------------------------


def test_a_connection_that_never_starts_tls_is_closed_after_the_handshake_timeout(
    node: Daemon,
) -> None:
    host, port = node.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        t0 = time.monotonic()
        s.settimeout(60)
        try:
            data = s.recv(1)  # we never send a ClientHello
        except ConnectionResetError:
            data = b""
        waited = time.monotonic() - t0
    assert data == b""
    # gRPC's default is 120 s; generous upper bound for a loaded machine.
    assert waited < 30, f"closed after {waited:.1f}s"


def test_an_idle_connection_is_closed_and_the_client_reconnects(
    node: Daemon, certs_dir: Path
) -> None:
    with channel(node.address, certs_dir, "client", own_subchannel=True) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        stub.Status(agent_pb2.StatusRequest(), timeout=10)
        assert ch._channel.check_connectivity_state(False) == 2  # type: ignore[attr-defined]  # READY
        deadline = time.monotonic() + 30
        while ch._channel.check_connectivity_state(False) == 2:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "the idle connection was kept"
            time.sleep(0.2)
        assert stub.Status(agent_pb2.StatusRequest(), timeout=10).name == "n5"  # reconnects


async def test_calls_past_the_per_connection_stream_cap_wait_for_a_slot(
    node: Daemon, certs_dir: Path
) -> None:
    _issue(certs_dir, "multiplexer", Role.CLIENT)
    async with aio_channel(node.address, certs_dir, "multiplexer", own_subchannel=True) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        await stub.Status(agent_pb2.StatusRequest(), timeout=10)
        req = agent_pb2.WatchRequest(namespace="conn")
        held = [stub.Watch(req, timeout=60) for _ in range(PER_CONNECTION)]
        await asyncio.sleep(1.0)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Status(agent_pb2.StatusRequest(), timeout=2)
        assert e.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED  # queued behind the cap
        queued = asyncio.ensure_future(stub.Status(agent_pb2.StatusRequest(), timeout=20))
        await asyncio.sleep(0.5)
        assert not queued.done()
        held.pop().cancel()  # a slot frees: the queued call goes through
        assert (await queued).name == "n5"
        for w in held:
            w.cancel()

"""The channel pool after a peer restarts at the same address: a channel left in gRPC's
reconnect backoff is replaced by a fresh one, on the next call or when membership reports
the peer at a new incarnation, so calls do not fail while the peer is back (a real loopback
server, stopped and started again on the same port)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from p2pagent.identity import material as tls
from p2pagent.membership.view import ALIVE, SUSPECT, MemberView
from p2pagent.testing.daemon import free_port
from p2pagent.transport import channels
from p2pagent.transport.channels import REDIAL_AFTER_S, ChannelPool, in_backoff
from p2pagent.transport.credentials import server_credentials

#: Long enough that a call made after the peer is back would fail for the whole test if the
#: pool kept the channel in its backoff.
LONG_BACKOFF = [
    ("grpc.initial_reconnect_backoff_ms", 60_000),
    ("grpc.min_reconnect_backoff_ms", 60_000),
    ("grpc.max_reconnect_backoff_ms", 60_000),
]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _serve(material: tls.TLSMaterial, address: str) -> grpc.aio.Server:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_secure_port(address, server_credentials(lambda: material))
    await server.start()
    return server


async def _check(pool: ChannelPool, address: str) -> None:
    stub = health_pb2_grpc.HealthStub(pool.get(address))
    await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)


@pytest.fixture
async def peer(certs_dir: Path) -> AsyncIterator[tuple[ChannelPool, tls.TLSMaterial, str, Clock]]:
    material = tls.load(tls.TLSPaths.in_dir(certs_dir, "n1"))
    clock = Clock()
    pool = ChannelPool(lambda: material, extra_options=LONG_BACKOFF, clock=clock)
    try:
        yield pool, material, f"127.0.0.1:{free_port()}", clock
    finally:
        await pool.close()


async def _down_then_back(
    pool: ChannelPool, material: tls.TLSMaterial, address: str
) -> grpc.aio.Server:
    """Serves, calls, stops (a call now fails and leaves the channel in backoff), serves
    again on the same port; returns the new server."""
    server = await _serve(material, address)
    await _check(pool, address)
    await server.stop(None)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await _check(pool, address)
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert in_backoff(pool.get(address))  # younger than REDIAL_AFTER_S: kept
    return await _serve(material, address)


async def test_a_call_after_the_peer_came_back_redials_at_once(
    peer: tuple[ChannelPool, tls.TLSMaterial, str, Clock],
) -> None:
    pool, material, address, clock = peer
    server = await _down_then_back(pool, material, address)
    try:
        clock.now += REDIAL_AFTER_S
        await _check(pool, address)  # a fresh channel: no wait for the 60 s backoff
        assert pool.redials == 1
        await _check(pool, address)
        assert pool.redials == 1  # a working channel is kept
    finally:
        await server.stop(None)


async def test_a_new_incarnation_redials_before_any_call(
    peer: tuple[ChannelPool, tls.TLSMaterial, str, Clock],
) -> None:
    pool, material, address, _ = peer
    pool.member_changed(MemberView("n1", address, ALIVE, 1))
    server = await _down_then_back(pool, material, address)
    try:
        pool.member_changed(MemberView("n1", address, SUSPECT, 2))  # not alive: kept
        pool.member_changed(MemberView("n1", address, ALIVE, 1))  # not newer: kept
        assert pool.redials == 0
        pool.member_changed(MemberView("n1", address, ALIVE, 2))  # it restarted
        assert pool.redials == 1
        await _check(pool, address)  # the clock never moved: the new incarnation did it
        assert pool.redials == 1
    finally:
        await server.stop(None)


async def test_a_peer_that_stays_down_is_not_redialled_on_every_call(
    peer: tuple[ChannelPool, tls.TLSMaterial, str, Clock],
) -> None:
    pool, material, address, clock = peer
    server = await _down_then_back(pool, material, address)
    await server.stop(None)
    clock.now += REDIAL_AFTER_S
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError):
            await _check(pool, address)
    assert pool.redials == 1  # then the fresh channel's own backoff, inside REDIAL_AFTER_S


class RecordingChannel:
    """Records how it was closed; a close with a grace lasts that grace (calls still on it)."""

    def __init__(self) -> None:
        self.closes: list[float | None] = []

    async def close(self, grace: float | None = None) -> None:
        self.closes.append(grace)
        if grace is not None:
            await asyncio.sleep(grace)


async def test_a_replaced_channel_gets_its_grace_and_a_closing_pool_does_not_wait_it_out(
    monkeypatch: pytest.MonkeyPatch, certs_dir: Path
) -> None:
    made: list[RecordingChannel] = []

    def fake_channel(*args: object, **kwargs: object) -> RecordingChannel:
        made.append(RecordingChannel())
        return made[-1]

    monkeypatch.setattr(channels, "secure_channel", fake_channel)
    material = tls.load(tls.TLSPaths.in_dir(certs_dir, "n1"))
    pool = ChannelPool(lambda: material)
    pool.redial("127.0.0.9:7000")  # nothing to replace yet: a first dial
    assert len(made) == 1 and pool.redials == 0
    pool.redial("127.0.0.9:7000")
    assert len(made) == 2 and pool.redials == 1
    await asyncio.sleep(0)
    old = made[0]
    # The old channel got its grace period to finish the calls on it...
    assert old.closes and old.closes[0] is not None and old.closes[0] > 0
    # ... and a pool closing (the node stopping) does not wait it out: closed at once.
    await asyncio.wait_for(pool.close(), 5)
    assert old.closes[-1] is None
    assert made[1].closes == [None]

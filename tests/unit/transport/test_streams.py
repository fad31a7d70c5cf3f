"""The open-stream registry: per-identity cap, ending every stream of a revoked identity,
ending a stream when its certificate expires, and never cancelling a stream parked in grpc's
write (grpc would then send no status at all)."""

from __future__ import annotations

import asyncio
import time

import pytest

from p2pagent import errors
from p2pagent.identity.spiffe import Identity, Role
from p2pagent.transport.streams import OpenStreams

ALICE = Identity("c1", Role.CLIENT, "alice")
N1 = Identity("c1", Role.NODE, "n1")


async def test_the_cap_refuses_a_client_past_it_and_names_the_knob() -> None:
    streams = OpenStreams(max_per_identity=2)
    a, _ = streams.open(ALICE, None), streams.open(ALICE, None)
    with pytest.raises(errors.ResourceExhausted, match="max_streams_per_identity = 2"):
        streams.open(ALICE, None)
    for _ in range(5):
        streams.open(N1, None)  # nodes are not capped
    streams.close(a)
    streams.open(ALICE, None)  # a slot is free again
    assert streams.count(ALICE.uri) == 2 and streams.count(N1.uri) == 5


async def test_ending_an_identity_cancels_its_waiting_streams_only() -> None:
    streams = OpenStreams(0)
    started = asyncio.Event()

    async def handler(ident: Identity, busy: bool) -> str:
        s = streams.open(ident, None)
        s.busy = busy
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            return f"cancelled: {s.ended}"
        finally:
            streams.close(s)
        return "not cancelled"

    waiting = asyncio.create_task(handler(ALICE, busy=True))
    writing = asyncio.create_task(handler(ALICE, busy=False))  # parked in grpc's write
    other = asyncio.create_task(handler(N1, busy=True))
    await asyncio.sleep(0)
    assert streams.end_identity(ALICE.uri, errors.PermissionDenied("revoked: lost")) == 2
    assert await waiting == "cancelled: revoked: lost"
    await asyncio.sleep(0.01)
    assert not writing.done() and not other.done()  # only marked: the guard ends it later
    assert all(s.ended is not None for s in streams._by_uri[ALICE.uri])
    writing.cancel()
    other.cancel()
    await asyncio.gather(writing, other, return_exceptions=True)
    assert streams.total() == 0


async def test_a_stream_ends_when_its_certificate_expires() -> None:
    streams = OpenStreams(0, expiry_check_s=0.02)
    s = streams.open(ALICE, time.time() + 0.05)
    s.busy = True
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(5)
    assert isinstance(s.ended, errors.PermissionDenied) and "expired" in str(s.ended)
    streams.close(s)
    later = streams.open(ALICE, time.time() + 0.05)
    await asyncio.sleep(0.03)  # checked: its expiry timer is armed
    assert later.expiry is not None
    streams.close(later)  # closed in time: its expiry timer is cancelled
    await asyncio.sleep(0.1)
    assert later.ended is None


async def test_a_certificate_that_expires_within_the_first_check_still_ends_the_stream() -> None:
    # Already expired when the stream opens (an old connection): ended at the first check.
    streams = OpenStreams(0, expiry_check_s=0.05)
    s = streams.open(ALICE, lambda: time.time() - 1)
    s.busy = True
    t0 = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(5)
    assert time.monotonic() - t0 >= 0.04 and "expired" in str(s.ended)
    streams.close(s)


async def test_a_short_stream_never_reads_its_certificate_expiry() -> None:
    # Reading the expiry (grpc's auth context) and timing it was most of a stream's cost:
    # only a stream still open at the next check pays for it, once.
    reads: list[str] = []

    def expiry_of(name: str) -> float:
        reads.append(name)
        return time.time() + 3600

    streams = OpenStreams(0, expiry_check_s=0.05)
    for i in range(100):
        streams.close(streams.open(ALICE, lambda i=i: expiry_of(f"short {i}")))
    long = streams.open(ALICE, lambda: expiry_of("long"))
    await asyncio.sleep(0.15)
    assert reads == ["long"] and streams.expiries_timed == 1
    assert long.expiry is not None and not long.expiry.cancelled()
    streams.close(long)
    assert long.expiry.cancelled() and streams.total() == 0


async def test_a_stream_still_parked_after_the_grace_has_its_connection_cut() -> None:
    cut: list[str] = []
    streams = OpenStreams(0, cut=lambda peer: cut.append(peer) or True, cut_grace_s=0.05)
    parked = streams.open(ALICE, None, peer=lambda: "ipv4:127.0.0.1:40000")  # read to cut
    resumed = streams.open(ALICE, None, peer="ipv4:127.0.0.1:40001")
    streams.end_identity(ALICE.uri, errors.PermissionDenied("revoked"))
    assert cut == []  # the client may still read and get the error
    streams.close(resumed)  # its write returned within the grace: the guard ended it
    await asyncio.sleep(0.2)
    assert cut == ["ipv4:127.0.0.1:40000"] and streams.cuts == 1
    streams.close(parked)
    assert streams.total() == 0

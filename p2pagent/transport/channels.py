"""A pool of long-lived mutual-TLS channels, one per peer address.

Channels stay open between calls (gRPC reconnects them by itself); keepalive is set here and
accepted by the server (`server.KEEPALIVE_SERVER_OPTIONS`) together, so neither side ever
treats the other's pings as abuse.

A peer that restarts at the same address finds its old channel in gRPC's reconnect backoff
(up to ``grpc.max_reconnect_backoff_ms``): calls on it fail UNAVAILABLE at once until the
next attempt, though the peer is back. So the pool replaces a channel in backoff
(TRANSIENT_FAILURE) by a fresh one, which dials at once: when a call is about to use it (at
most once per ``REDIAL_AFTER_S``, so a peer that is really down is not redialled on every
call), and when membership reports the peer alive at a new incarnation (``member_changed``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from p2pagent.identity.material import TLSMaterial
from p2pagent.transport.credentials import channel_credentials, target_name

if TYPE_CHECKING:
    from p2pagent.membership.view import MemberView

KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def channel_options(cluster: str, max_message_bytes: int) -> list[tuple[str, int | str]]:
    return [
        ("grpc.ssl_target_name_override", target_name(cluster)),
        ("grpc.default_authority", target_name(cluster)),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # Only while calls are open (streams, slow calls): idle channels to every peer would
        # otherwise cost each node O(N) pings (issue 28); a broken idle one shows on use.
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Reconnect quickly after a peer restarts: the default backoff grows to 120 s.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 5_000),
        ("grpc.min_reconnect_backoff_ms", 200),
    ]


#: Least time between two dials of one address by the pool (grpc's own first backoff): a
#: channel in backoff younger than this is kept, so calls to a peer that is down fail at once
#: instead of each paying a new connection attempt.
REDIAL_AFTER_S = 0.2
#: How long calls still running on a replaced channel get before it is closed.
RETIRED_CHANNEL_GRACE_S = 10.0


def secure_channel(
    address: str,
    material: TLSMaterial,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    extra_options: Sequence[tuple[str, int | str]] = (),
) -> grpc.aio.Channel:
    """One mutual-TLS channel to ``address`` that verifies the peer is a node of our cluster
    (``extra_options`` replace the defaults of the same names)."""
    options = dict(channel_options(material.cluster, max_message_bytes))
    options.update(extra_options)
    return grpc.aio.secure_channel(
        address, channel_credentials(material), options=list(options.items())
    )


def in_backoff(channel: grpc.aio.Channel) -> bool:
    """The channel's last connection attempt failed and it waits out gRPC's reconnect backoff
    (calls fail UNAVAILABLE at once meanwhile)."""
    state = channel.get_state(try_to_connect=False)
    return state is grpc.ChannelConnectivity.TRANSIENT_FAILURE


class ChannelPool:
    """Keeps one channel per address; must be used from the event loop that created it."""

    def __init__(
        self,
        material: Callable[[], TLSMaterial],
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        *,
        extra_options: Sequence[tuple[str, int | str]] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._material = material
        self._max = max_message_bytes
        self._extra_options = tuple(extra_options)
        self._clock = clock
        self._channels: dict[str, grpc.aio.Channel] = {}
        #: address -> when the pool dialled its channel (``clock``).
        self._dialled_at: dict[str, float] = {}
        #: address -> the newest incarnation of the member seen alive there.
        self._incarnations: dict[str, int] = {}
        #: Replaced channels closing after their grace, by the task that closes each.
        self._closing: dict[asyncio.Task[Any], grpc.aio.Channel] = {}
        #: Channels replaced because they were in backoff (for stats and tests).
        self.redials = 0

    def get(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            return self._dial(address)
        if in_backoff(ch) and self._clock() - self._dialled_at[address] >= REDIAL_AFTER_S:
            return self.redial(address)
        return ch

    def member_changed(self, view: MemberView) -> None:
        """A membership listener: a peer alive at a newer incarnation than seen before (it
        restarted, or refuted a suspicion) gets a fresh channel if its own is in backoff, so
        the first call after its restart does not fail."""
        from p2pagent.membership.view import ALIVE

        if view.state != ALIVE:
            return
        seen = self._incarnations.get(view.address)
        self._incarnations[view.address] = view.incarnation
        if seen is None or view.incarnation <= seen:
            return
        ch = self._channels.get(view.address)
        if ch is not None and in_backoff(ch):
            self.redial(view.address)

    def _dial(self, address: str) -> grpc.aio.Channel:
        ch = secure_channel(address, self._material(), self._max, self._extra_options)
        self._channels[address] = ch
        self._dialled_at[address] = self._clock()
        return ch

    def redial(self, address: str) -> grpc.aio.Channel:
        """A fresh channel to ``address`` in place of the old one, which dials at once (a
        caller that saw its peer come back); calls still on the old one get
        ``RETIRED_CHANNEL_GRACE_S`` before it is closed."""
        old = self._channels.pop(address, None)
        if old is not None:
            self.redials += 1
            self._close_later(old)
        return self._dial(address)

    def _close_later(self, channel: grpc.aio.Channel) -> None:
        task = asyncio.get_running_loop().create_task(channel.close(RETIRED_CHANNEL_GRACE_S))
        self._closing[task] = channel
        task.add_done_callback(lambda t: self._closing.pop(t, None))

    def retire_all(self) -> list[grpc.aio.Channel]:
        """Forgets every channel, so the next call dials with the current certificates.

        Returns the old channels for the caller to close once their calls have had time to
        finish (after a certificate reload: an open channel would otherwise keep presenting
        the old certificate whenever it reconnects, until that one expires).
        """
        old, self._channels = list(self._channels.values()), {}
        return old

    async def drop(self, address: str) -> None:
        """Closes the channel to ``address`` (for example after certificates were rotated)."""
        ch = self._channels.pop(address, None)
        if ch is not None:
            await ch.close()

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close()
        closing, self._closing = dict(self._closing), {}
        for task in closing:
            task.cancel()
        await asyncio.gather(*closing, return_exceptions=True)
        for ch in closing.values():
            await ch.close()  # at once: the node is stopping

"""A pool of long-lived mutual-TLS channels, one per peer address.

Channels stay open between calls (gRPC reconnects them by itself); keepalive is set here and
accepted by the server (`server.KEEPALIVE_SERVER_OPTIONS`) together, so neither side ever
treats the other's pings as abuse.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from p2pagent.identity.material import TLSMaterial
from p2pagent.transport.credentials import channel_credentials, target_name

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


def secure_channel(
    address: str, material: TLSMaterial, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> grpc.aio.Channel:
    """One mutual-TLS channel to ``address`` that verifies the peer is a node of our cluster."""
    return grpc.aio.secure_channel(
        address,
        channel_credentials(material),
        options=channel_options(material.cluster, max_message_bytes),
    )


class ChannelPool:
    """Keeps one channel per address; must be used from the event loop that created it."""

    def __init__(
        self,
        material: Callable[[], TLSMaterial],
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._material = material
        self._max = max_message_bytes
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            ch = secure_channel(address, self._material(), self._max)
            self._channels[address] = ch
        return ch

    def retire_all(self) -> list[grpc.aio.Channel]:
        """Forgets every channel, so the next call dials with the current certificates.

        Returns the old channels for the caller to close once their calls have had time to
        finish (after a certificate reload: an open channel would otherwise keep presenting
        the old certificate whenever it reconnects, until that one expires).
        """
        old, self._channels = list(self._channels.values()), {}
        return old

    def retire(self, address: str) -> grpc.aio.Channel | None:
        """Forgets the channel to ``address``, so the next call dials at once: a peer that
        restarted at the same address is otherwise reached only after the old channel's
        reconnect backoff (up to ``grpc.max_reconnect_backoff_ms``). Returns the old channel
        for the caller to close once its calls have had time to finish."""
        return self._channels.pop(address, None)

    async def drop(self, address: str) -> None:
        """Closes the channel to ``address`` (for example after certificates were rotated)."""
        ch = self._channels.pop(address, None)
        if ch is not None:
            await ch.close()

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close()

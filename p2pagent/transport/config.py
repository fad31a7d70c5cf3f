"""Settings of the node's gRPC server connections (the ``[transport]`` section of the config)."""

from __future__ import annotations

from dataclasses import dataclass

from p2pagent.errors import ConfigError


@dataclass
class TransportConfig:
    """Limits on the connections and streams one node accepts."""

    #: Seconds a new connection has to finish its TLS handshake before the node closes it (a
    #: socket that never sends a ClientHello holds nothing longer than this).
    handshake_timeout: float = 5.0
    #: Seconds a connection may stay without any call in progress before the node closes it
    #: (gracefully: clients reconnect on their next call). 0 keeps idle connections open.
    max_connection_idle: float = 300.0
    #: Most calls in progress at once on one connection (HTTP/2 concurrent streams); a client
    #: past it waits for a slot. 0 means gRPC's default (no limit).
    max_concurrent_streams: int = 1024
    #: Most streaming calls (Watch, Wait, uploads...) one client, publisher or admin identity
    #: may hold open on one node; the next is refused with RESOURCE_EXHAUSTED. Node identities
    #: are not capped. 0 disables the cap.
    max_streams_per_identity: int = 256
    #: Most requests one InferStream or SubmitStream call may have awaiting their answer at
    #: once (an answer counts until the client has read it); one more is answered
    #: RESOURCE_EXHAUSTED alone, and a client that keeps sending without reading is ended.
    #: Bounds the answers a node holds for one stream.
    stream_max_in_flight: int = 64

    def validate(self) -> TransportConfig:
        if self.handshake_timeout <= 0:
            raise ConfigError("transport.handshake_timeout must be a positive number of seconds")
        if self.max_connection_idle < 0:
            raise ConfigError("transport.max_connection_idle must be >= 0 seconds (0 disables it)")
        for name in ("max_concurrent_streams", "max_streams_per_identity"):
            if getattr(self, name) < 0:
                raise ConfigError(f"transport.{name} must be >= 0 (0 disables the limit)")
        if self.stream_max_in_flight < 1:
            raise ConfigError(
                "transport.stream_max_in_flight must be >= 1 (requests in flight per stream)"
            )
        return self

    def server_options(self) -> list[tuple[str, int]]:
        """The grpc core channel arguments that enforce these limits on the server."""
        options = [("grpc.server_handshake_timeout_ms", int(self.handshake_timeout * 1000))]
        if self.max_connection_idle:
            options.append(("grpc.max_connection_idle_ms", int(self.max_connection_idle * 1000)))
        if self.max_concurrent_streams:
            options.append(("grpc.max_concurrent_streams", self.max_concurrent_streams))
        return options

"""Settings of the replicated state (the ``[state]`` section of the node config)."""

from __future__ import annotations

from dataclasses import dataclass

from p2pagent.errors import ConfigError
from p2pagent.state.codec import ENVELOPE_BYTES

MIB = 1024 * 1024


@dataclass
class StateConfig:
    """Limits and timings of one replica. Every field is checked by :meth:`validate`."""

    #: Largest encoded sync message (delta push, anti-entropy answer). Larger syncs are cut
    #: into several messages, each under this limit.
    max_message_bytes: int = MIB
    #: Largest value (LWW/MV) or set element. 0 means "as large as fits one message":
    #: ``max_message_bytes`` minus room for the envelope, key and namespace.
    max_value_bytes: int = 0
    #: Longest namespace or key, in UTF-8 bytes.
    max_key_bytes: int = 1024
    #: Most elements one SetAdd/SetRemove may name.
    max_set_elements_per_op: int = 10_000
    #: Seconds between delta pushes of pending local writes.
    gossip_interval: float = 0.2
    #: Peers each batch of local deltas is pushed to.
    gossip_fanout: int = 3
    #: The push fanout grows to ``retransmit_mult * log10(N + 1)`` peers in larger meshes.
    retransmit_mult: float = 4.0
    #: Forward each delta received for the first time to ``gossip_fanout`` peers (rumor
    #: mongering). Off: only the writer pushes, and the rest learn by anti-entropy.
    forward_deltas: bool = True
    #: Seconds between anti-entropy rounds (a digest to one random live peer); stretched past
    #: 32 members as memberlist stretches its push-pull.
    anti_entropy_interval: float = 2.0
    #: Operations kept in the delta buffer to answer digests of peers that are slightly behind.
    delta_buffer_ops: int = 20_000
    #: Encoded bytes the delta buffer may hold.
    delta_buffer_bytes: int = 8 * MIB
    #: Changes kept in memory for the Watch API (the store keeps more, see store.py).
    change_log_size: int = 10_000
    #: Bytes of changes one Watch stream may hold waiting for a slow consumer. Past it the
    #: stream is ended with RESOURCE_EXHAUSTED naming the seq to resume from (``from_seq``),
    #: and what it held is freed: a consumer that stops reading costs the node about this much.
    watch_buffer_bytes: int = 4 * MIB
    #: Remote HLC timestamps further ahead of our wall clock than this are not adopted.
    max_clock_skew: float = 60.0
    #: Garbage-collected origins remembered (a few dozen bytes each) to refuse their late dots.
    retired_max: int = 100_000
    #: Seconds a non-durable change waits to be saved together with the ones after it (one
    #: disk write for a burst of writes); a durable write is saved at once.
    persist_linger: float = 0.05
    #: Sync calls allowed in flight to one peer; past it pushes are dropped (anti-entropy
    #: repairs them) rather than queued behind a slow peer.
    max_in_flight_per_peer: int = 8
    #: Seconds one delta push may take, and the default wait for a write's acknowledgements.
    push_timeout: float = 5.0
    #: Seconds one anti-entropy exchange may take: its answer may carry a whole replica to a
    #: new node.
    anti_entropy_timeout: float = 120.0

    def value_limit(self) -> int:
        """The effective value limit (resolves the 0 default)."""
        if self.max_value_bytes:
            return self.max_value_bytes
        return self.max_message_bytes - envelope_reserve(self.max_key_bytes)

    def validate(self) -> StateConfig:
        reserve = envelope_reserve(self.max_key_bytes)
        if self.max_message_bytes < 4 * reserve:
            raise ConfigError(
                f"state.max_message_bytes={self.max_message_bytes} is too small: it must be at "
                f"least {4 * reserve} (four times the envelope of a key of max_key_bytes)"
            )
        if self.max_value_bytes < 0 or self.max_value_bytes > self.max_message_bytes - reserve:
            raise ConfigError(
                f"state.max_value_bytes={self.max_value_bytes} must be 0 (automatic) or at most "
                f"max_message_bytes - {reserve} = {self.max_message_bytes - reserve}, so that "
                "any single value fits one sync message"
            )
        for name in (
            "max_key_bytes",
            "max_set_elements_per_op",
            "gossip_fanout",
            "delta_buffer_ops",
            "change_log_size",
            "watch_buffer_bytes",
            "max_in_flight_per_peer",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"state.{name} must be at least 1")
        for name in (
            "gossip_interval",
            "anti_entropy_interval",
            "max_clock_skew",
            "persist_linger",
            "push_timeout",
            "anti_entropy_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"state.{name} must be positive")
        if self.retransmit_mult < 0:
            raise ConfigError("state.retransmit_mult must be 0 or more")
        return self


def envelope_reserve(max_key_bytes: int) -> int:
    """Bytes a message needs besides one value: envelope, namespace, key, origin, context."""
    return ENVELOPE_BYTES + 2 * (4 * max_key_bytes + 5) + 256

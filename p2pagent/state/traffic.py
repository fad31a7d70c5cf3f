"""Counts of state sync traffic by direction and kind, for the node's metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pagent.state.messages import DeltaMessage, Message


def traffic_kind(message: Message) -> str:
    """ "delta" for a pushed change, "anti_entropy" for digests and the repairs they ask for."""
    return "delta" if isinstance(message, DeltaMessage) else "anti_entropy"


@dataclass
class SyncTraffic:
    #: (direction: "sent" | "received", kind) -> messages, and -> payload bytes.
    messages: dict[tuple[str, str], int] = field(default_factory=dict)
    bytes: dict[tuple[str, str], int] = field(default_factory=dict)

    def count(self, direction: str, message: Message, size: int) -> None:
        key = (direction, traffic_kind(message))
        self.messages[key] = self.messages.get(key, 0) + 1
        self.bytes[key] = self.bytes.get(key, 0) + size

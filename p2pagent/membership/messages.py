"""SWIM protocol messages and the member updates they piggyback.

Every message is one-way; a probe's ack is a message of its own (the gRPC driver returns
answers to the caller in the RPC response, the simulator routes them like any message).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from p2pagent.membership.hints import LoadHint


class State(enum.Enum):
    """A member's state. Values are what ``p2pagentctl members --json`` prints."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"

    @property
    def reachable(self) -> bool:
        return self is State.ALIVE or self is State.SUSPECT

    @property
    def gone(self) -> bool:
        return self is State.DEAD or self is State.LEFT


class Kind(enum.IntEnum):
    PING = 1  # "are you alive?" -> ACK
    ACK = 2
    PING_REQ = 3  # "please ping target for me" -> ACK (forwarded) or NACK
    NACK = 4  # "I asked, the target did not answer in time" (Lifeguard)
    GOSSIP = 5  # piggybacked updates only
    PUSH_PULL = 6  # full state; answered by PUSH_PULL_REPLY (join, anti-entropy, re-join)
    PUSH_PULL_REPLY = 7


@dataclass(frozen=True, slots=True)
class Update:
    """A claim about one member: ``name`` is in ``state`` as of ``incarnation``.

    ``origin`` is the member that made the claim (for suspicions: whose confirmation it is).
    Alive updates carry the member's address and tags; others may leave them empty.
    """

    name: str
    incarnation: int
    state: State
    origin: str
    address: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Message:
    kind: Kind
    #: Sender's member name and the address it can be reached at.
    src: str
    src_address: str
    #: Probe sequence number (PING, ACK, PING_REQ, NACK).
    seq: int = 0
    #: PING: the member the sender believes it is talking to; PING_REQ: who to probe.
    target: str = ""
    target_address: str = ""
    #: PUSH_PULL: whether the sender is joining (it then knows nobody yet).
    join: bool = False
    #: Piggybacked updates (every kind).
    updates: tuple[Update, ...] = ()
    #: PUSH_PULL and its reply: the sender's full member table.
    members: tuple[Update, ...] = ()
    #: Piggybacked load hints (``hints``); push-pull carries every hint the sender knows.
    hints: tuple[LoadHint, ...] = ()


@dataclass(frozen=True, slots=True)
class Send:
    """Output of the core: deliver ``message`` to the member at ``address``.

    ``name`` is the intended recipient when known (empty for seed addresses).
    """

    address: str
    name: str
    message: Message

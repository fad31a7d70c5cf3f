"""Messages replicas exchange (carried as msgpack bytes, see :mod:`p2pagent.state.codec`).

Sync protocol, in short:

- **push**: after local writes, a replica sends its new deltas (:class:`DeltaMessage`) to a
  few random live peers (``gossip_fanout``);
- **anti-entropy**: every ``anti_entropy_interval`` it sends its :class:`DigestMessage`
  (the dots it has seen) to one random live peer, which answers with only what is missing,
  from its delta buffer when that covers the gap, else with slices of its state; every message
  stays under ``max_message_bytes``. When the digest shows the asker has dots the answerer
  lacks, the answer also carries the answerer's own digest (``reply=False``) so the asker
  pushes those back: push-pull in one and a half round trips;
- **retired**: when two replicas disagree on which origins were garbage-collected, the answer
  carries a :class:`RetiredMessage`, so a replica that has seen everything of a departed
  origin can drop it too.

``DeltaMessage.deltas`` hold :class:`~p2pagent.state.crdt.DotMap` objects; they are treated as
immutable once placed in a message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from p2pagent.state.clocks import Range
from p2pagent.state.crdt import DotMap


@dataclass(frozen=True, slots=True)
class OpId:
    """Identifies the delta of one local operation: counters ``first..last`` of ``origin``."""

    origin: str
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class Delta:
    """A delta state; ``op`` is set when it is exactly one operation's delta (then peers may
    buffer and forward it), and None for a slice of a larger state."""

    state: DotMap
    op: OpId | None = None
    #: The delta's own msgpack bytes when it was decoded from a message (kept by the buffer).
    wire: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class DeltaMessage:
    sender: str
    deltas: tuple[Delta, ...]


@dataclass(frozen=True, slots=True)
class DigestMessage:
    """The sender's seen dots (active origins only); per origin a hash of which of them are
    still live (``live``: see ``DotMap.summary``), so two replicas that have seen the same dots
    notice when one missed a removal; a short hash of its retired origins; and whether the
    receiver should send its own digest back when it lacks something."""

    sender: str
    context: Mapping[str, tuple[Range, ...]]
    live: Mapping[str, int]
    retired_hash: bytes
    reply: bool = True


@dataclass(frozen=True, slots=True)
class RetiredMessage:
    """Origins the sender has garbage-collected, with the last counter seen of each."""

    sender: str
    retired: Mapping[str, int]


Message = DeltaMessage | DigestMessage | RetiredMessage


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message for the driver to send to ``peer`` (a node name)."""

    peer: str
    message: Message

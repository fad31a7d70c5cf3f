"""What the rest of the node sees of membership: member snapshots and change callbacks.

State, models and tasks depend on this small interface, never on the SWIM core, so each can be
tested against `StaticDirectory` and the membership protocol can change underneath them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

ALIVE = "alive"
SUSPECT = "suspect"
DEAD = "dead"
LEFT = "left"
STATES = (ALIVE, SUSPECT, DEAD, LEFT)


@dataclass(frozen=True)
class MemberView:
    """One member as this node currently believes it to be."""

    name: str
    address: str
    state: str
    incarnation: int
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def reachable(self) -> bool:
        """Alive or merely suspected: still worth sending work and gossip to."""
        return self.state in (ALIVE, SUSPECT)


Listener = Callable[[MemberView], None]


class PeerDirectory(Protocol):
    """Membership as seen by the other capabilities. The local node is never in `peers()`."""

    name: str

    def peers(self) -> list[MemberView]:
        """Other members that are alive or suspect, in name order."""
        ...

    def member(self, name: str) -> MemberView | None:
        """Any known member (self included), whatever its state."""
        ...

    def members(self) -> list[MemberView]:
        """Every known member, self included, in name order."""
        ...

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Calls ``listener`` on the event loop after every state change of a member; returns
        a function that unsubscribes."""
        ...


class StaticDirectory:
    """A fixed directory for tests and single-node runs; `set` changes a member."""

    def __init__(self, name: str, others: Iterable[MemberView] = ()) -> None:
        self.name = name
        self._members: dict[str, MemberView] = {m.name: m for m in others}
        self._listeners: list[Listener] = []

    def peers(self) -> list[MemberView]:
        return [m for n, m in sorted(self._members.items()) if n != self.name and m.reachable]

    def member(self, name: str) -> MemberView | None:
        return self._members.get(name)

    def members(self) -> list[MemberView]:
        return [m for _, m in sorted(self._members.items())]

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def set(self, member: MemberView) -> None:
        self._members[member.name] = member
        for listener in list(self._listeners):
            listener(member)

"""The member table of the SWIM core: every known member, and the reachable ones in a list.

Probing, gossip and re-join pick random members several times a second; building the list of
reachable members for every pick costs O(N) in a cluster of thousands. The table keeps the
reachable ones (alive or suspect, never this member) in a list with each name's position, so a
random pick is O(1) and a state change updates the list in O(1) (swap with the last, pop). It
also keeps the DEAD members (not LEFT ones: they said goodbye), the candidates for re-join and
for gossip to the dead.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from p2pagent.membership.messages import State, Update
from p2pagent.membership.suspicion import Suspicion
from p2pagent.membership.view import MemberView


@dataclass(slots=True)
class Member:
    name: str
    address: str
    incarnation: int
    state: State
    tags: Mapping[str, str]
    since: float
    suspicion: Suspicion | None = None

    def view(self) -> MemberView:
        return MemberView(self.name, self.address, self.state.value, self.incarnation, self.tags)

    def update(self, origin: str) -> Update:
        return Update(self.name, self.incarnation, self.state, origin, self.address, self.tags)


class MemberTable:
    def __init__(self, me: Member) -> None:
        self.me = me
        self._members: dict[str, Member] = {me.name: me}
        #: Reachable members (alive or suspect), never this one, in no particular order.
        self.peers: list[str] = []
        self._peer_at: dict[str, int] = {}
        #: DEAD (not LEFT) members, in the order they died: re-join candidates.
        self.dead: dict[str, None] = {}

    def get(self, name: str) -> Member | None:
        return self._members.get(name)

    def __getitem__(self, name: str) -> Member:
        return self._members[name]

    def __contains__(self, name: str) -> bool:
        return name in self._members

    def __iter__(self) -> Iterator[Member]:
        """Every known member, this one included, in name order."""
        return iter([m for _, m in sorted(self._members.items())])

    def alive_count(self) -> int:
        """Reachable members, this one included: the N of every formula."""
        return len(self.peers) + 1

    def add(self, m: Member) -> None:
        """A member seen for the first time; `moved(m, None)` files it by its state."""
        self._members[m.name] = m

    def moved(self, m: Member, before: State | None) -> None:
        """Files ``m`` by its new state after it was ``before`` (None: just added)."""
        was = before is State.ALIVE or before is State.SUSPECT
        now_reachable = m.state is State.ALIVE or m.state is State.SUSPECT
        if now_reachable and not was:
            self._peer_at[m.name] = len(self.peers)
            self.peers.append(m.name)
        elif was and not now_reachable:
            i = self._peer_at.pop(m.name)
            last = self.peers.pop()
            if last != m.name:
                self.peers[i] = last
                self._peer_at[last] = i
        if m.state is State.DEAD:
            self.dead[m.name] = None
        else:
            self.dead.pop(m.name, None)

    def forget(self, name: str) -> None:
        """Drops a gone member whose tombstone expired (a gone member is never a peer)."""
        del self._members[name]
        self.dead.pop(name, None)

    def reachable_addresses(self) -> set[str]:
        return {m.address for m in self._members.values() if m.state.reachable}

    def sample_peers(self, rng: random.Random, k: int, exclude: str = "") -> list[str]:
        """Up to ``k`` distinct random peers other than ``exclude``."""
        names = self.peers
        if k <= 0 or not names:
            return []
        if len(names) <= k + 1:
            pool = [n for n in names if n != exclude]
            rng.shuffle(pool)
            return pool[:k]
        picked: list[str] = []
        seen: set[int] = set()
        while len(picked) < k and len(seen) < len(names):
            i = rng.randrange(len(names))
            if i in seen:
                continue
            seen.add(i)
            if names[i] != exclude:
                picked.append(names[i])
        return picked

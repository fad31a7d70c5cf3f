"""This member's outgoing protocol messages, each carrying the updates waiting to spread.

SWIM spreads news by piggybacking: every ping, ack, nack and gossip takes up to
``max_piggyback`` updates from the dissemination queue (`broadcasts.TransmitQueue`), each
counted against its retransmit limit, which grows with log(N), and up to
``MAX_HINTS_PER_MESSAGE`` load hints from theirs (`hints.HintQueue`, same limit). Building
every message here keeps that rule in one place: no message leaves without its share of the
queues. Push-pull messages carry the whole member table and every known hint.
"""

from __future__ import annotations

from p2pagent.membership.broadcasts import TransmitQueue, retransmit_limit
from p2pagent.membership.config import MembershipConfig
from p2pagent.membership.hints import MAX_HINTS_PER_MESSAGE, HintQueue, HintTable, LoadHint
from p2pagent.membership.members import Member, MemberTable
from p2pagent.membership.messages import Kind, Message, Send, Update


class Outbox:
    def __init__(self, table: MemberTable, config: MembershipConfig) -> None:
        self._table = table
        self._config = config
        self._name = table.me.name
        self._address = table.me.address
        #: Updates waiting to be piggybacked.
        self.queue = TransmitQueue()
        #: Load hints waiting to be piggybacked, and every hint known (for push-pull).
        self.hint_queue = HintQueue()
        self.hints = HintTable()

    def __bool__(self) -> bool:
        """Whether anything waits to be piggybacked (a gossip round has something to say)."""
        return bool(self.queue) or bool(self.hint_queue)

    def take(self, recipient: str) -> list[Update]:
        """The updates for one message to ``recipient`` ("" for an unnamed one)."""
        limit = retransmit_limit(self._config.retransmit_mult, self._table.alive_count())
        return self.queue.take(self._config.max_piggyback, limit, skip=recipient)

    def take_hints(self, recipient: str) -> tuple[LoadHint, ...]:
        if not self.hint_queue:
            return ()
        limit = retransmit_limit(self._config.retransmit_mult, self._table.alive_count())
        return tuple(self.hint_queue.take(MAX_HINTS_PER_MESSAGE, limit, skip=recipient))

    def to_member(
        self,
        kind: Kind,
        to: Member,
        *,
        seq: int = 0,
        target: str = "",
        target_address: str = "",
        first: list[Update] | None = None,
    ) -> Send:
        """A message to a known member; ``first`` goes before the queued updates (and
        replaces queued ones about the same members), e.g. the buddy suspicion."""
        updates = self.take(to.name)
        if first:
            about = {u.name for u in first}
            updates = first + [u for u in updates if u.name not in about]
        msg = Message(
            kind,
            self._name,
            self._address,
            seq=seq,
            target=target or (to.name if kind is Kind.PING else ""),
            target_address=target_address,
            updates=tuple(updates),
            hints=self.take_hints(to.name),
        )
        return Send(to.address, to.name, msg)

    def ping_for(self, seq: int, target: str, target_address: str) -> Send:
        """The ping of an indirect probe run on another member's behalf."""
        msg = Message(
            Kind.PING,
            self._name,
            self._address,
            seq=seq,
            target=target,
            updates=tuple(self.take(target)),
            hints=self.take_hints(target),
        )
        return Send(target_address, target, msg)

    def to_requester(self, kind: Kind, address: str, seq: int) -> Send:
        """An ACK or NACK to the requester of an indirect probe, known only by address."""
        msg = Message(
            kind,
            self._name,
            self._address,
            seq=seq,
            updates=tuple(self.take("")),
            hints=self.take_hints(""),
        )
        return Send(address, "", msg)

    def reply(self, kind: Kind, to: Message, seq: int = 0, full_state: bool = False) -> Send:
        msg = Message(
            kind,
            self._name,
            self._address,
            seq=seq,
            updates=tuple(self.take(to.src)),
            members=self.full_state() if full_state else (),
            hints=tuple(self.hints.all()) if full_state else self.take_hints(to.src),
        )
        return Send(to.src_address, to.src, msg)

    def push_pull(self, address: str, name: str, join: bool = False) -> Send:
        msg = Message(
            Kind.PUSH_PULL,
            self._name,
            self._address,
            join=join,
            members=self.full_state(),
            hints=tuple(self.hints.all()),
        )
        return Send(address, name, msg)

    def full_state(self) -> tuple[Update, ...]:
        return tuple(m.update(m.name) for m in self._table)

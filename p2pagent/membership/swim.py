"""The SWIM failure detector and membership protocol with the Lifeguard extensions, as a pure
state machine: no clock, no sockets, no randomness of its own (DESIGN.md's one rule).

Inputs are `handle(message, now)`, `tick(now)` at `next_deadline()`, `join(now)` and
`leave(now)`; every one returns the `Send`s to perform. Member changes accumulate for
`take_events()`.

The rules, in the order a newcomer will look for them:

* Probing (SWIM): every probe interval, ping the next member of a shuffled round-robin order.
  No ack within the probe timeout: ping it once more and ask ``indirect_checks`` others to
  ping it (PING_REQ); they forward its ack, or answer NACK when it stays silent. No ack by
  the end of the interval: the member becomes SUSPECT.
* Incarnations: only a member raises its own incarnation. Alive(i) beats any claim with a
  lower incarnation; Suspect(i) beats Alive(i); Dead/Left(i) beat both, and Left(i) beats
  Dead(i) (the member said so itself). A member that hears
  it is suspected or dead refutes with Alive(i + 1); one that hears a claim about an earlier
  incarnation queues its current Alive again, so the reply carries it to the member that
  missed it. The incarnation is persisted by the driver, so a restarted member starts above
  anything the cluster said about it.
* Dissemination: every update is queued and piggybacked on protocol messages, and gossiped to
  ``gossip_fanout`` random members every gossip interval, at most
  ``retransmit_mult * ceil(log10(N + 1))`` times each. A suspicion or death goes to its
  subject too (as in memberlist): it is the one member that can refute it.
* Lifeguard: probe interval and timeout grow with local health awareness; suspicion timeouts
  start long and shrink as independent members confirm (see `timing`): only a member whose
  own probe failed confirms, and only the ``k`` expected confirmations count; when probing a
  suspect, the suspicion rides along in both direct pings so the suspect can refute at once
  (buddy).
* Last look: when a suspicion times out at a member that only heard the rumour (its own
  probes of the suspect did not fail), it probes the suspect itself (buddy included) before
  declaring it dead. A crashed member fails that probe; a live one whose refutation's
  epidemic missed this member answers with it.
* Push-pull: a join, and every push-pull interval, exchanges full member tables with one
  member. Remote Dead claims are merged as Suspect, so a member wrongly declared dead by a
  partition gets to refute instead of being buried. Merged suspicions carry no origin: the
  table does not say who suspected, so they confirm nothing.
* Re-join: every re-join interval, with probability (dead members / alive members) as in
  Serf, push-pull with a random dead member, and with probability 1 / alive members with a
  seed that is not an alive member: the two sides of a healed partition find each other and
  everyone wrongly dead refutes. No operator action needed. A member that knows no peer at
  all retries its join to the seeds after 0.1 s, then on a doubling delay up to the re-join
  interval (seeds started together are often not listening at the first attempt).
* Reaping: Dead and Left members stay as tombstones for ``dead_reap_s`` so that stale Alive
  claims cannot resurrect them, then are forgotten.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from p2pagent.membership import timing
from p2pagent.membership.broadcasts import TransmitQueue, retransmit_limit
from p2pagent.membership.config import MembershipConfig
from p2pagent.membership.messages import Kind, Message, Send, State, Update
from p2pagent.membership.view import MemberView

#: Fraction of the probe timeout an indirect prober waits before answering NACK.
NACK_FRACTION = 0.8
#: First delay before the join is tried again while no peer is known (then doubled, capped at
#: the re-join interval).
JOIN_RETRY_FIRST_S = 0.1
#: Seconds after a member's death during which gossip is still sent to it (memberlist's
#: GossipToTheDeadTime): a member that was only cut off hears of its death and refutes.
GOSSIP_TO_THE_DEAD_S = 30.0


@dataclass(slots=True)
class Suspicion:
    incarnation: int
    start: float
    lo: float
    hi: float
    k: int
    confirmations: set[str]
    #: This member's own probe of the suspect failed during the suspicion.
    probed_silent: bool = False
    #: The timeout ran out and this member is probing the suspect one last time itself.
    checking: bool = False

    def confirmed(self) -> int:
        """Independent confirmations beyond the first suspector (a suspicion learned second-hand
        from a push-pull table has no suspector of its own: the first one named is not one)."""
        return max(0, len(self.confirmations) - 1)

    def deadline(self) -> float:
        return self.start + timing.suspicion_timeout(self.lo, self.hi, self.k, self.confirmed())


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


@dataclass(slots=True)
class Probe:
    seq: int
    target: str
    indirect_at: float
    end_at: float
    acked: bool = False
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class Forward:
    """An indirect probe this member runs on behalf of another."""

    requester_address: str
    requester_seq: int
    nack_at: float
    expires_at: float
    nacked: bool = False


@dataclass
class Counters:
    probes: int = 0
    probe_failures: int = 0
    refutations: int = 0
    suspicions: int = 0
    deaths_declared: int = 0
    push_pulls: int = 0
    rejoins: int = 0


class Swim:
    def __init__(
        self,
        name: str,
        address: str,
        config: MembershipConfig,
        rng: random.Random,
        *,
        incarnation: int = 1,
        tags: Mapping[str, str] | None = None,
        seeds: Iterable[str] = (),
        now: float = 0.0,
    ) -> None:
        self.name = name
        self.address = address
        self.config = config
        self.rng = rng
        self.seeds = [s for s in seeds if s != address]
        self.counters = Counters()
        self._members: dict[str, Member] = {}
        self._self = Member(name, address, incarnation, State.ALIVE, dict(tags or {}), now)
        self._members[name] = self._self
        # Reachable peers (alive or suspect, never self) as an indexable list for O(1) sampling.
        self._peers: list[str] = []
        self._peer_at: dict[str, int] = {}
        self._dead: dict[str, None] = {}  # DEAD (not LEFT) members: re-join candidates
        self._queue = TransmitQueue()
        self._events: list[MemberView] = []
        self._timers: list[tuple[float, int, str]] = []  # (when, member generation, name)
        self._generation: dict[str, int] = {}
        self._probe_order: list[str] = []
        self._last_looks: list[str] = []  # expired suspects to probe before the round-robin
        self._probe_pos = 0
        self._probe: Probe | None = None
        self._forwards: dict[int, Forward] = {}
        self._seq = 0
        self.awareness = 0
        self.leaving = False
        jitter = rng.random()
        self._next_probe = now + config.probe_interval * jitter
        self._next_gossip = now + config.gossip_interval * jitter
        self._next_push_pull = now + config.push_pull_interval * (0.5 + jitter)
        self._next_rejoin = now + config.rejoin_interval * (0.5 + jitter)
        #: While alone (no peer known), the join is retried on a short, doubling delay: seeds
        #: started at the same moment are often not listening yet at the first attempt.
        self._join_retries = 0
        self._next_join_retry = math.inf  # armed by join()

    # ---- views ------------------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._self.incarnation

    def members(self) -> list[MemberView]:
        return [m.view() for _, m in sorted(self._members.items())]

    def member(self, name: str) -> MemberView | None:
        m = self._members.get(name)
        return None if m is None else m.view()

    def state_of(self, name: str) -> State | None:
        m = self._members.get(name)
        return None if m is None else m.state

    def alive_count(self) -> int:
        """Reachable members, this one included: the N of every formula."""
        return len(self._peers) + 1

    def take_events(self) -> list[MemberView]:
        events, self._events = self._events, []
        return events

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Changes this member's tags; the change spreads with a new incarnation."""
        self._self.tags = dict(tags)
        self._bump(self._self.incarnation + 1)

    # ---- entry points -----------------------------------------------------------------------

    def restore(self, members: Iterable[Update], now: float) -> None:
        """Starts from a known member table (a snapshot) without disseminating it."""
        for u in members:
            if u.name != self.name and u.name not in self._members and u.state.reachable:
                m = Member(u.name, u.address, u.incarnation, State.ALIVE, dict(u.tags), now)
                self._members[u.name] = m
                self._peer_at[u.name] = len(self._peers)
                self._peers.append(u.name)
        self._reschedule_push_pull(now)

    def join(self, now: float, addresses: Iterable[str] | None = None) -> list[Send]:
        """Full state exchange with every seed (or the given addresses)."""
        targets = [a for a in (self.seeds if addresses is None else addresses) if a != self.address]
        if targets and addresses is None:
            self._join_retries = 0
            self._next_join_retry = now + JOIN_RETRY_FIRST_S
        return [self._push_pull_to(a, "", now, join=True) for a in targets]

    def leave(self, now: float) -> list[Send]:
        """Graceful leave: others mark this member LEFT (not DEAD) and stop probing it."""
        self.leaving = True
        me = self._self
        me.state = State.LEFT
        me.since = now
        self._queue.put(me.update(self.name))
        self._events.append(me.view())
        targets = self._sample(self._peers, max(2 * self.config.gossip_fanout, 1))
        return [self._message(Kind.GOSSIP, self._members[t], now) for t in targets]

    def next_deadline(self) -> float:
        t = min(self._next_gossip, self._next_push_pull, self._next_rejoin, self._next_join_retry)
        if not self.leaving:
            t = min(t, self._next_probe)
            if self._probe is not None:
                p = self._probe
                t = min(t, p.end_at if p.indirect_sent or p.acked else p.indirect_at)
        if self._timers:
            t = min(t, self._timers[0][0])
        for f in self._forwards.values():
            t = min(t, f.expires_at if f.nacked else f.nack_at)
        return t

    def tick(self, now: float) -> list[Send]:
        out: list[Send] = []
        self._run_timers(now)
        self._run_forwards(now, out)
        if not self.leaving:
            self._run_probe(now, out)
        if now >= self._next_gossip:
            self._next_gossip = now + self.config.gossip_interval
            self._gossip(now, out)
        if now >= self._next_push_pull:
            self._next_push_pull = now + self._push_pull_interval()
            if self._peers and not self.leaving:
                target = self._members[self.rng.choice(self._peers)]
                out.append(self._push_pull_to(target.address, target.name, now))
        if now >= self._next_rejoin:
            self._next_rejoin = now + self.config.rejoin_interval
            if not self.leaving:
                self._rejoin(now, out)
        if now >= self._next_join_retry:
            self._retry_join(now, out)
        return out

    def _retry_join(self, now: float, out: list[Send]) -> None:
        if self._peers or self.leaving:
            self._next_join_retry = math.inf  # joined: re-joins take over from here
            return
        self._join_retries += 1
        delay = min(self.config.rejoin_interval, JOIN_RETRY_FIRST_S * 2**self._join_retries)
        self._next_join_retry = now + delay
        for a in self.seeds:
            if a != self.address:
                out.append(self._push_pull_to(a, "", now, join=True))

    def handle(self, msg: Message, now: float) -> list[Send]:
        out: list[Send] = []
        for u in msg.updates:
            self._apply(u, now)
        kind = msg.kind
        if kind is Kind.PING:
            if not msg.target or msg.target == self.name:
                out.append(self._reply(Kind.ACK, msg, now, seq=msg.seq))
        elif kind is Kind.ACK:
            self._on_ack(msg.seq, now, out)
        elif kind is Kind.NACK:
            if self._probe is not None and msg.seq == self._probe.seq:
                self._probe.nacks += 1
        elif kind is Kind.PING_REQ:
            self._forward_probe(msg, now, out)
        elif kind is Kind.PUSH_PULL:
            self._merge(msg.members, msg.src, now)
            out.append(self._reply(Kind.PUSH_PULL_REPLY, msg, now, full_state=True))
        elif kind is Kind.PUSH_PULL_REPLY:
            joined = len(self._peers) <= 1
            self._merge(msg.members, msg.src, now)
            if joined:
                self._reschedule_push_pull(now)
        return out

    # ---- probing ----------------------------------------------------------------------------

    def _run_probe(self, now: float, out: list[Send]) -> None:
        p = self._probe
        if p is not None and not p.acked and not p.indirect_sent and now >= p.indirect_at:
            self._send_indirect(p, now, out)
        if p is not None and now >= p.end_at:
            self._finish_probe(p, now)
            self._probe = p = None
        if now >= self._next_probe:
            interval = timing.scaled(self.config.probe_interval, self.awareness)
            self._next_probe = now + interval
            if p is None:
                self._start_probe(now, interval, out)

    def _start_probe(self, now: float, interval: float, out: list[Send]) -> None:
        target = self._next_probe_target()
        if target is None:
            return
        self.counters.probes += 1
        self._seq += 1
        timeout = timing.scaled(self.config.probe_timeout, self.awareness)
        self._probe = Probe(self._seq, target.name, now + timeout, now + interval)
        out.append(self._message(Kind.PING, target, now, seq=self._seq, first=self._buddy(target)))

    def _buddy(self, target: Member) -> list[Update]:
        """Lifeguard's buddy system: a ping to a suspect tells it so, and it refutes at once."""
        if target.state is not State.SUSPECT:
            return []
        return [Update(target.name, target.incarnation, State.SUSPECT, self.name)]

    def _next_probe_target(self) -> Member | None:
        while self._last_looks:
            m = self._members.get(self._last_looks.pop(0))
            if m is not None and m.suspicion is not None and m.suspicion.checking:
                return m
        for _ in range(2):
            while self._probe_pos < len(self._probe_order):
                name = self._probe_order[self._probe_pos]
                self._probe_pos += 1
                m = self._members.get(name)
                if m is not None and m.state.reachable and name != self.name:
                    return m
            if not self._peers:
                return None
            self._probe_order = list(self._peers)
            self.rng.shuffle(self._probe_order)
            self._probe_pos = 0
        return None

    def _send_indirect(self, p: Probe, now: float, out: list[Send]) -> None:
        p.indirect_sent = True
        target = self._members.get(p.target)
        if target is None or not target.state.reachable:
            return
        helpers = self._sample(self._peers, self.config.indirect_checks, exclude=p.target)
        p.expected_nacks = len(helpers)
        # A second direct ping alongside the indirect ones (memberlist's TCP fallback ping):
        # one lost datagram should not be enough to start a suspicion. It carries the buddy
        # suspicion too: the first ping, and with it the news, may be the one that was lost.
        out.append(self._message(Kind.PING, target, now, seq=p.seq, first=self._buddy(target)))
        for h in helpers:
            out.append(
                self._message(
                    Kind.PING_REQ,
                    self._members[h],
                    now,
                    seq=p.seq,
                    target=target.name,
                    target_address=target.address,
                )
            )

    def _finish_probe(self, p: Probe, now: float) -> None:
        target = self._members.get(p.target)
        s = None if target is None else target.suspicion
        if p.acked:
            if target is not None and s is not None and s.checking:
                # It answered, but no refutation came with the answer (it went the indirect
                # way): still alive, so look again a probe interval from now.
                s.checking = False
                self._schedule(target, now + self.config.probe_interval)
            return
        self.counters.probe_failures += 1
        # Lifeguard: missing nacks mean our own messages may be the ones going missing.
        if p.expected_nacks > 0:
            self._adjust_awareness(max(0, p.expected_nacks - p.nacks))
        else:
            self._adjust_awareness(1)
        if target is None or not target.state.reachable:
            return
        if s is not None and s.checking:
            self._declare_dead(target, now)  # the last look failed too
            return
        self._apply(Update(target.name, target.incarnation, State.SUSPECT, self.name), now)
        if target.suspicion is not None:
            target.suspicion.probed_silent = True

    def _on_ack(self, seq: int, now: float, out: list[Send]) -> None:
        p = self._probe
        if p is not None and seq == p.seq:
            if not p.acked:
                p.acked = True
                self._adjust_awareness(-1)
            return
        f = self._forwards.pop(seq, None)
        if f is not None:
            out.append(
                Send(
                    f.requester_address,
                    "",
                    self._plain(Kind.ACK, f.requester_seq, now),
                )
            )

    def _forward_probe(self, msg: Message, now: float, out: list[Send]) -> None:
        if not msg.target_address or msg.target == self.name:
            return
        self._seq += 1
        timeout = timing.scaled(self.config.probe_timeout, self.awareness)
        self._forwards[self._seq] = Forward(
            msg.src_address,
            msg.seq,
            now + NACK_FRACTION * timeout,
            now + self.config.probe_interval,
        )
        ping = Message(
            Kind.PING,
            self.name,
            self.address,
            seq=self._seq,
            target=msg.target,
            updates=tuple(self._take(msg.target)),
        )
        out.append(Send(msg.target_address, msg.target, ping))

    def _run_forwards(self, now: float, out: list[Send]) -> None:
        if not self._forwards:
            return
        for seq, f in list(self._forwards.items()):
            if now >= f.expires_at:
                del self._forwards[seq]
            elif not f.nacked and now >= f.nack_at:
                f.nacked = True
                out.append(
                    Send(f.requester_address, "", self._plain(Kind.NACK, f.requester_seq, now))
                )

    def _adjust_awareness(self, delta: int) -> None:
        self.awareness = min(self.config.awareness_max, max(0, self.awareness + delta))

    # ---- dissemination ----------------------------------------------------------------------

    def _gossip(self, now: float, out: list[Send]) -> None:
        if not self._queue:
            return
        candidates = self._sample(self._peers, self.config.gossip_fanout)
        if self._dead:
            # One recently dead member per round hears the news too: if it was only cut off,
            # it learns it is considered dead and refutes.
            name = self.rng.choice(list(self._dead))
            if now - self._members[name].since < GOSSIP_TO_THE_DEAD_S:
                candidates.append(name)
        for name in candidates:
            if not self._queue:
                break
            out.append(self._message(Kind.GOSSIP, self._members[name], now))

    def _take(self, recipient: str) -> list[Update]:
        limit = retransmit_limit(self.config.retransmit_mult, self.alive_count())
        return self._queue.take(self.config.max_piggyback, limit, skip=recipient)

    def _message(
        self,
        kind: Kind,
        to: Member,
        now: float,
        *,
        seq: int = 0,
        target: str = "",
        target_address: str = "",
        first: list[Update] | None = None,
    ) -> Send:
        updates = self._take(to.name)
        if first:
            about = {u.name for u in first}
            updates = first + [u for u in updates if u.name not in about]
        msg = Message(
            kind,
            self.name,
            self.address,
            seq=seq,
            target=target or (to.name if kind is Kind.PING else ""),
            target_address=target_address,
            updates=tuple(updates),
        )
        return Send(to.address, to.name, msg)

    def _plain(self, kind: Kind, seq: int, now: float) -> Message:
        return Message(kind, self.name, self.address, seq=seq, updates=tuple(self._take("")))

    def _reply(
        self, kind: Kind, to: Message, now: float, seq: int = 0, full_state: bool = False
    ) -> Send:
        msg = Message(
            kind,
            self.name,
            self.address,
            seq=seq,
            updates=tuple(self._take(to.src)),
            members=self._full_state() if full_state else (),
        )
        return Send(to.src_address, to.src, msg)

    def _full_state(self) -> tuple[Update, ...]:
        return tuple(m.update(m.name) for _, m in sorted(self._members.items()))

    # ---- push-pull and re-join --------------------------------------------------------------

    def _push_pull_interval(self) -> float:
        # memberlist scales push-pull down for big clusters so its cost per node stays flat.
        n = self.alive_count()
        scale = 1 if n <= 32 else math.ceil(math.log2(n) - math.log2(32)) + 1
        return self.config.push_pull_interval * scale

    def _reschedule_push_pull(self, now: float) -> None:
        # The interval depends on N, which a join or restore just changed.
        self._next_push_pull = now + self._push_pull_interval() * (0.5 + self.rng.random())

    def _push_pull_to(self, address: str, name: str, now: float, join: bool = False) -> Send:
        self.counters.push_pulls += 1
        msg = Message(
            Kind.PUSH_PULL, self.name, self.address, join=join, members=self._full_state()
        )
        return Send(address, name, msg)

    def _rejoin(self, now: float, out: list[Send]) -> None:
        alive = self.alive_count()
        if self._dead and self.rng.random() < len(self._dead) / alive:
            m = self._members[self.rng.choice(list(self._dead))]
            self.counters.rejoins += 1
            out.append(self._push_pull_to(m.address, m.name, now))
        if self.seeds and self.rng.random() < 1 / alive:
            known = {m.address for m in self._members.values() if m.state.reachable}
            missing = [s for s in self.seeds if s not in known]
            if missing:
                self.counters.rejoins += 1
                out.append(self._push_pull_to(self.rng.choice(missing), "", now))

    def _merge(self, members: Iterable[Update], sender: str, now: float) -> None:
        for u in members:
            if u.state is State.DEAD or u.state is State.SUSPECT:
                # A remote death is only a suspicion here: if it was a partition, the member
                # gets the suspicion timeout to refute rather than being buried at once. The
                # table does not say who suspected, and the sender most likely only relayed
                # it: the suspicion carries no origin, so it confirms nothing anywhere.
                u = Update(u.name, u.incarnation, State.SUSPECT, "", u.address, u.tags)
            self._apply(u, now)

    # ---- the update rules -------------------------------------------------------------------

    def _apply(self, u: Update, now: float) -> None:
        if u.name == self.name:
            self._about_me(u)
            return
        m = self._members.get(u.name)
        if u.state is State.ALIVE:
            self._apply_alive(m, u, now)
        elif m is None:
            return  # suspicion or death of a member we never knew: nothing to act on
        elif u.state is State.SUSPECT:
            self._apply_suspect(m, u, now)
        else:
            self._apply_gone(m, u, now)

    def _about_me(self, u: Update) -> None:
        me = self._self
        if self.leaving:
            return
        if u.state is State.ALIVE:
            if u.incarnation > me.incarnation:
                self._refute(u.incarnation)  # a stale life of ours claims more; outbid it
            return
        if u.incarnation >= me.incarnation:
            self._refute(u.incarnation)
            self._adjust_awareness(1)
        else:
            # A suspicion or death of an earlier incarnation: the sender missed our refutation.
            # Queue it afresh, so the reply to this very message carries it back.
            self._queue.put(me.update(self.name))

    def _refute(self, incarnation: int) -> None:
        self.counters.refutations += 1
        self._bump(incarnation + 1)

    def _bump(self, incarnation: int) -> None:
        me = self._self
        me.incarnation = incarnation
        self._queue.put(me.update(self.name))
        self._events.append(me.view())

    def _apply_alive(self, m: Member | None, u: Update, now: float) -> None:
        if m is None:
            m = Member(u.name, u.address, u.incarnation, State.ALIVE, dict(u.tags), now)
            self._members[u.name] = m
            self._changed(m, None, now)
            self._queue.put(u)
            return
        if u.incarnation <= m.incarnation:
            return
        before = m.state
        m.incarnation = u.incarnation
        m.state = State.ALIVE
        if u.address:
            m.address = u.address
        m.tags = dict(u.tags)
        m.suspicion = None
        self._changed(m, before, now)
        self._queue.put(u)

    def _apply_suspect(self, m: Member, u: Update, now: float) -> None:
        if u.incarnation < m.incarnation or m.state.gone:
            return
        s = m.suspicion
        if m.state is State.SUSPECT and s is not None and u.incarnation == s.incarnation:
            # An independent confirmation (a member whose own probe failed) shortens the
            # timeout and is passed on, until the k expected ones are in (memberlist).
            if u.origin and u.origin not in s.confirmations and s.confirmed() < s.k:
                s.confirmations.add(u.origin)
                if not s.checking:
                    self._schedule(m, s.deadline())
                self._queue.put(u)
            return
        before = m.state
        n = self.alive_count()
        lo = timing.suspicion_min(self.config.suspicion_mult, n, self.config.probe_interval)
        m.state = State.SUSPECT
        m.incarnation = u.incarnation
        m.suspicion = Suspicion(
            u.incarnation,
            now,
            lo,
            lo * self.config.suspicion_max_mult,
            timing.expected_confirmations(self.config.suspicion_mult, n),
            {u.origin} if u.origin else set(),
        )
        self.counters.suspicions += 1
        self._schedule(m, m.suspicion.deadline())
        self._changed(m, before, now)
        self._queue.put(Update(m.name, m.incarnation, State.SUSPECT, u.origin))

    def _apply_gone(self, m: Member, u: Update, now: float) -> None:
        if u.incarnation < m.incarnation:
            return
        if m.state.gone and not (m.state is State.DEAD and u.state is State.LEFT):
            # Only one change between the two: a departure the member announced itself
            # replaces our guess that it died (if we missed its leave and probed it dead
            # first), so every member ends up saying "left".
            return
        before = m.state
        m.state = u.state
        m.incarnation = u.incarnation
        m.suspicion = None
        self._changed(m, before, now)
        self._queue.put(Update(m.name, m.incarnation, m.state, u.origin))
        self._schedule(m, now + self.config.dead_reap_s)

    def _changed(self, m: Member, before: State | None, now: float) -> None:
        if before is None or before is not m.state:
            m.since = now
        was = before is State.ALIVE or before is State.SUSPECT
        now_reachable = m.state is State.ALIVE or m.state is State.SUSPECT
        if now_reachable and not was:
            self._peer_at[m.name] = len(self._peers)
            self._peers.append(m.name)
        elif was and not now_reachable:
            i = self._peer_at.pop(m.name)
            last = self._peers.pop()
            if last != m.name:
                self._peers[i] = last
                self._peer_at[last] = i
        if m.state is State.DEAD:
            self._dead[m.name] = None
        else:
            self._dead.pop(m.name, None)
        if m.state is not State.SUSPECT:
            self._generation[m.name] = self._generation.get(m.name, 0) + 1
        self._events.append(m.view())

    # ---- timers: suspicion expiry and tombstone reaping ---------------------------------------

    def _schedule(self, m: Member, when: float) -> None:
        gen = self._generation.get(m.name, 0) + 1
        self._generation[m.name] = gen
        heapq.heappush(self._timers, (when, gen, m.name))

    def _run_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, gen, name = heapq.heappop(self._timers)
            m = self._members.get(name)
            if m is None or self._generation.get(name) != gen:
                continue  # superseded by a later state change or reschedule
            if m.state is State.SUSPECT:
                self._suspicion_expired(m, now)
            elif m.state.gone:
                del self._members[name]
                self._dead.pop(name, None)
                self._generation.pop(name, None)
                self._queue.drop(name)

    def _suspicion_expired(self, m: Member, now: float) -> None:
        """No refutation reached us within the suspicion timeout. A member whose own probe of
        the suspect failed declares it dead now. One that only heard the rumour first takes a
        last look: it probes the suspect itself, the suspicion riding along (buddy). The
        refutation's epidemic can miss a member (each update is sent a bounded number of times,
        and every member holds the rumour, so one in N^2 misses matters); then the suspect's
        ack carries its refutation to us. A member that really crashed fails this probe, and
        by then the probers that suspected it have usually declared it dead everywhere.
        Without an answer within a few probe intervals, it is declared dead anyway."""
        s = m.suspicion
        if s is None or s.checking or s.probed_silent or self.leaving:
            self._declare_dead(m, now)
            return
        s.checking = True
        self._last_looks.append(m.name)
        self._schedule(m, now + 3 * timing.scaled(self.config.probe_interval, self.awareness))

    def _declare_dead(self, m: Member, now: float) -> None:
        self.counters.deaths_declared += 1
        self._apply_gone(m, Update(m.name, m.incarnation, State.DEAD, self.name), now)

    # ---- helpers ------------------------------------------------------------------------------

    def _sample(self, names: list[str], k: int, exclude: str = "") -> list[str]:
        if k <= 0 or not names:
            return []
        if len(names) <= k + 1:
            pool = [n for n in names if n != exclude]
            self.rng.shuffle(pool)
            return pool[:k]
        picked: list[str] = []
        seen: set[int] = set()
        while len(picked) < k and len(seen) < len(names):
            i = self.rng.randrange(len(names))
            if i in seen:
                continue
            seen.add(i)
            if names[i] != exclude:
                picked.append(names[i])
        return picked

"""The SWIM failure detector and membership protocol with the Lifeguard extensions, as a pure
state machine: no clock, no sockets, no randomness of its own (DESIGN.md's one rule).

Inputs are `handle(message, now)`, `tick(now)` at `next_deadline()`, `join(now)` and
`leave(now)`; every one returns the `Send`s to perform. Member changes accumulate for
`take_events()`.

This module wires the rules together; each rule has a module of its own, listed here in the
order a newcomer will look for them:

* Probing (SWIM, `prober`, `probing`): every probe interval, ping the next member of a shuffled
  round-robin order. No ack within the probe timeout: ping it once more and ask
  ``indirect_checks`` others to ping it (PING_REQ); they forward its ack, or answer NACK when
  it stays silent. No ack by the end of the interval: the member becomes SUSPECT.
* Incarnations (`precedence`): only a member raises its own incarnation. Alive(i) beats any
  claim with a lower incarnation; Suspect(i) beats Alive(i); Dead/Left(i) beat both, and
  Left(i) beats Dead(i). A member that hears it is suspected or dead refutes with
  Alive(i + 1); a member passing on such a claim after the refutation is told it directly.
  The incarnation is persisted by the driver, so a restarted member starts above
  anything the cluster said about it.
* Dissemination (here, and `broadcasts`): every update is queued and piggybacked on protocol
  messages, and gossiped to ``gossip_fanout`` random members every gossip interval, at most
  ``retransmit_mult * ceil(log10(N + 1))`` times each. A suspicion or death goes to its
  subject too (as in memberlist): it is the one member that can refute it.
* Lifeguard (`timing`, `suspicion`): probe interval and timeout (and here the gossip
  interval too) grow with local health awareness; suspicion timeouts start long and shrink
  as independent members confirm; a ping to a suspect carries the suspicion (buddy); a
  member that only heard the rumour takes a last look at the suspect before declaring it
  dead; a member whose own tick came late gives its probe the lost time (`probing`).
* Push-pull (here): a join, and every push-pull interval, exchanges full member tables with
  one member. Remote Dead claims are merged as origin-less Suspect (`precedence.as_relayed`).
* Re-join (`rejoin`): re-joins with dead members and seeds heal partitions without operator
  action; a member that knows no peer retries its join on a short, doubling delay. Catch-up
  (`catch_up`): a joiner push-pulls again while its table grows, and an unknown sender is
  answered with a push-pull, so a mass join does not wait for the periodic one.
* Load hints (`hints`): a member's small load summary, published by the tasks layer when it
  changed materially, rides on the same messages (piggybacked, bounded per message,
  retransmitted like updates) and on push-pull; hints about non-members, out of range or
  stale are dropped and counted. A dead or departed member's hint is forgotten.
* Reaping (here): Dead and Left members stay as tombstones for ``dead_reap_s`` so that stale
  Alive claims cannot resurrect them, then are forgotten.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from p2pagent.membership import timing
from p2pagent.membership.catch_up import CatchUp, UnknownSenders, catch_up_delay
from p2pagent.membership.config import MembershipConfig
from p2pagent.membership.hints import HintDissemination, LoadHint
from p2pagent.membership.members import Member, MemberTable
from p2pagent.membership.messages import Kind, Message, Send, State, Update
from p2pagent.membership.outbox import Outbox
from p2pagent.membership.precedence import (
    Answer,
    alive_wins,
    answer_about_me,
    as_relayed,
    corrections,
    gone_wins,
    suspect_applies,
)
from p2pagent.membership.prober import ProbeEnd, Prober
from p2pagent.membership.rejoin import JoinRetry, rejoin_targets
from p2pagent.membership.suspicion import Suspicion, last_look_deadline
from p2pagent.membership.view import MemberView

#: Seconds after a member's death during which gossip is still sent to it (memberlist's
#: GossipToTheDeadTime): a member that was only cut off hears of its death and refutes.
GOSSIP_TO_THE_DEAD_S = 30.0


@dataclass
class Counters:
    probes: int = 0
    probe_failures: int = 0
    refutations: int = 0
    suspicions: int = 0
    deaths_declared: int = 0
    push_pulls: int = 0
    rejoins: int = 0
    #: Probes extended because this member's own tick came late (its loop was starved).
    late_ticks: int = 0
    #: Senders told the newer incarnation of a member they called suspect or dead.
    corrections: int = 0


class Swim:
    """One member's SWIM + Lifeguard state machine: its view of the cluster and its timers."""

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
        self._self = Member(name, address, incarnation, State.ALIVE, dict(tags or {}), now)
        self._members = MemberTable(self._self)
        self._out = Outbox(self._members, config)
        self._queue = self._out.queue  # the updates waiting to be piggybacked
        self._hints = HintDissemination(name, self._out.hints, self._out.hint_queue)
        self._events: list[MemberView] = []
        self._timers: list[tuple[float, int, str]] = []  # (when, member generation, name)
        self._generation: dict[str, int] = {}
        self.leaving = False
        jitter = rng.random()
        self._prober = Prober(self._members, self._out, config, rng, self.counters, now, jitter)
        self._next_gossip = now + config.gossip_interval * jitter
        self._next_push_pull = now + config.push_pull_interval * (0.5 + jitter)
        self._next_rejoin = now + config.rejoin_interval * (0.5 + jitter)
        self._join_retry = JoinRetry()
        self._catch_up = CatchUp()
        self._unknown = UnknownSenders()

    # ---- views ------------------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._self.incarnation

    @property
    def awareness(self) -> int:
        """Lifeguard's local health awareness (kept by the prober, whose probes it stretches)."""
        return self._prober.awareness

    @awareness.setter
    def awareness(self, value: int) -> None:
        self._prober.awareness = value

    def members(self) -> list[MemberView]:
        return [m.view() for m in self._members]

    def member(self, name: str) -> MemberView | None:
        m = self._members.get(name)
        return None if m is None else m.view()

    def state_of(self, name: str) -> State | None:
        m = self._members.get(name)
        return None if m is None else m.state

    def alive_count(self) -> int:
        """Reachable members, this one included: the N of every formula."""
        return self._members.alive_count()

    def take_events(self) -> list[MemberView]:
        events, self._events = self._events, []
        return events

    def take_hints(self) -> list[LoadHint]:
        """Load hints of other members accepted since the last call, oldest first."""
        return self._hints.take_events()

    def hints(self) -> list[LoadHint]:
        """The newest believable hint of every member that published one (this one too)."""
        return self._hints.table.all()

    @property
    def hints_rejected(self) -> dict[str, int]:
        """Hints dropped, by reason (``hints.NOT_MEMBER``, ``OUT_OF_RANGE``, ``STALE``)."""
        return dict(self._hints.table.rejected)

    @property
    def hints_published(self) -> int:
        return self._hints.published

    def publish_hint(self, hint: LoadHint, now: float, urgent: bool = False) -> list[Send]:
        """Spreads this member's new load hint (its ``node`` and ``seq`` are set here).

        ``urgent``: also gossip it to ``gossip_fanout`` members now rather than at the next
        round (a node that just became worth robbing should not wait for it).
        """
        if not self._hints.publish(hint):
            return []
        out: list[Send] = []
        if urgent and not self.leaving:
            for name in self._members.sample_peers(self.rng, self.config.gossip_fanout):
                out.append(self._out.to_member(Kind.GOSSIP, self._members[name]))
        return out

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
                self._members.add(m)
                self._members.moved(m, None)
        self._reschedule_push_pull(now)

    def join(self, now: float, addresses: Iterable[str] | None = None) -> list[Send]:
        """Full state exchange with every seed (or the given addresses)."""
        targets = [a for a in (self.seeds if addresses is None else addresses) if a != self.address]
        if targets and addresses is None:
            self._join_retry.arm(now)
        if targets:
            self._catch_up.start(now, catch_up_delay(self.config.probe_interval))
        return [self._push_pull_to(a, "", join=True) for a in targets]

    def leave(self, now: float) -> list[Send]:
        """Graceful leave: others mark this member LEFT (not DEAD) and stop probing it."""
        self.leaving = True
        me = self._self
        me.state = State.LEFT
        me.since = now
        self._queue.put(me.update(self.name))
        self._events.append(me.view())
        targets = self._members.sample_peers(self.rng, max(2 * self.config.gossip_fanout, 1))
        return [self._out.to_member(Kind.GOSSIP, self._members[t]) for t in targets]

    def next_deadline(self) -> float:
        t = min(
            self._next_push_pull,
            self._next_rejoin,
            self._join_retry.next_at,
            self._catch_up.next_at,
        )
        if self._out:
            # Gossip rounds only while something waits to be said: an idle member does not wake
            # five times a second to find nothing (a round overdue when news comes runs at once).
            t = min(t, self._next_gossip)
        if self._timers:
            t = min(t, self._timers[0][0])
        return min(t, self._prober.next_deadline(probing=not self.leaving))

    def tick(self, now: float) -> list[Send]:
        out: list[Send] = []
        self._run_timers(now)
        self._prober.run_forwards(now, out)
        if not self.leaving:
            ended = self._prober.run(now, out)
            if ended is not None:
                self._probe_ended(ended, now)
        if now >= self._next_gossip:
            # Stretched by local health like the probe interval: a member that finds itself
            # slow (its probes unanswered, itself suspected) is most likely short of CPU, and
            # gossiping less is what lets a starved mesh recover rather than feed its storm.
            self._next_gossip = now + timing.scaled(self.config.gossip_interval, self.awareness)
            self._gossip(now, out)
        if now >= self._next_push_pull:
            self._next_push_pull = now + self._push_pull_interval()
            self._push_pull_random(out)
        if now >= self._next_rejoin:
            self._next_rejoin = now + self.config.rejoin_interval
            if not self.leaving:
                self._rejoin(out)
        if now >= self._join_retry.next_at:
            self._retry_join(now, out)
        if self._catch_up.due(now, catch_up_delay(self.config.probe_interval)):
            self._push_pull_random(out)
        return out

    def handle(self, msg: Message, now: float) -> list[Send]:
        out: list[Send] = []
        for u in msg.updates:
            self._apply(u, now)
        kind = msg.kind
        if kind is Kind.PING:
            if not msg.target or msg.target == self.name:
                out.append(self._out.reply(Kind.ACK, msg, seq=msg.seq))
        elif kind is Kind.ACK:
            self._prober.on_ack(msg.seq, out)
        elif kind is Kind.NACK:
            self._prober.on_nack(msg.seq)
        elif kind is Kind.PING_REQ:
            self._prober.forward(msg, now, out)
        elif kind is Kind.PUSH_PULL:
            self._merge(msg.members, now)
            out.append(self._out.reply(Kind.PUSH_PULL_REPLY, msg, full_state=True))
        elif kind is Kind.PUSH_PULL_REPLY:
            joined = len(self._members.peers) <= 1
            self._merge(msg.members, now)
            if joined:
                self._reschedule_push_pull(now)
        # After the members (a push-pull's table may introduce the hints' subjects).
        for h in msg.hints:
            m = self._members.get(h.node)
            self._hints.offer(h, is_member=m is not None and m.state.reachable)
        self._correct(msg, out)
        unknown = msg.src not in self._members and msg.src != self.name and not self.leaving
        if unknown and msg.src_address and self._unknown.should_ask(msg.src_address, now):
            # It knows us and we do not know it (gossip missed us): ask for its table.
            out.append(self._push_pull_to(msg.src_address, msg.src))
        return out

    def _correct(self, msg: Message, out: list[Send]) -> None:
        """Tells the sender of claims older than what we know (`precedence.corrections`)."""
        sender = self._members.get(msg.src)
        if self.leaving or msg.src == self.name or sender is None or not sender.state.reachable:
            return  # an unknown sender is asked for its table instead (below)
        news = corrections(msg.updates, self._members.get)
        if not news:
            return
        self.counters.corrections += 1
        for i, send in enumerate(out):
            if send.address == msg.src_address:  # the reply (an ack) carries them first
                about = {u.name for u in news}
                rest = [u for u in send.message.updates if u.name not in about]
                out[i] = replace(send, message=replace(send.message, updates=(*news, *rest)))
                return
        out.append(self._out.to_member(Kind.GOSSIP, sender, first=news))

    # ---- probing (the `Prober` runs the probes; what a failed one means is decided here) ----

    def _probe_ended(self, end: ProbeEnd, now: float) -> None:
        target = self._members.get(end.target)
        s = None if target is None else target.suspicion
        if end.acked:
            if target is not None and s is not None and s.checking:
                # It answered, but no refutation came with the answer (it went the indirect
                # way): still alive, so look again a probe interval from now.
                s.checking = False
                self._schedule(target, now + self.config.probe_interval)
            return
        if target is None or not target.state.reachable:
            return
        if s is not None and s.checking:
            self._declare_dead(target, now)  # the last look failed too
            return
        self._apply(Update(target.name, target.incarnation, State.SUSPECT, self.name), now)
        if target.suspicion is not None:
            target.suspicion.probed_silent = True

    # ---- dissemination ----------------------------------------------------------------------

    def _gossip(self, now: float, out: list[Send]) -> None:
        if not self._out:
            return
        candidates = self._members.sample_peers(self.rng, self.config.gossip_fanout)
        if self._members.dead:
            # One recently dead member per round hears the news too: if it was only cut off,
            # it learns it is considered dead and refutes.
            name = self.rng.choice(list(self._members.dead))
            if now - self._members[name].since < GOSSIP_TO_THE_DEAD_S:
                candidates.append(name)
        for name in candidates:
            if not self._out:
                break
            out.append(self._out.to_member(Kind.GOSSIP, self._members[name]))

    # ---- push-pull and re-join --------------------------------------------------------------

    def _push_pull_interval(self) -> float:
        return timing.push_pull_interval(self.config.push_pull_interval, self.alive_count())

    def _reschedule_push_pull(self, now: float) -> None:
        # The interval depends on N, which a join or restore just changed.
        self._next_push_pull = now + self._push_pull_interval() * (0.5 + self.rng.random())

    def _push_pull_to(self, address: str, name: str, join: bool = False) -> Send:
        self.counters.push_pulls += 1
        return self._out.push_pull(address, name, join=join)

    def _push_pull_random(self, out: list[Send]) -> None:
        if self._members.peers and not self.leaving:
            target = self._members[self.rng.choice(self._members.peers)]
            out.append(self._push_pull_to(target.address, target.name))

    def _rejoin(self, out: list[Send]) -> None:
        for address, name in rejoin_targets(self.rng, self._members, self.seeds):
            self.counters.rejoins += 1
            out.append(self._push_pull_to(address, name))

    def _retry_join(self, now: float, out: list[Send]) -> None:
        if self._members.peers or self.leaving:
            self._join_retry.disarm()  # joined: re-joins take over from here
            return
        self._join_retry.again(now, self.config.rejoin_interval)
        for a in self.seeds:
            if a != self.address:
                out.append(self._push_pull_to(a, "", join=True))

    def _merge(self, members: Iterable[Update], now: float) -> None:
        for u in members:
            self._apply(as_relayed(u), now)

    # ---- the update rules (which claim wins: see `precedence`) --------------------------------

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
        answer = answer_about_me(self._self.incarnation, u, self.leaving)
        if answer is Answer.OUTBID:
            self._refute(u.incarnation)
        elif answer is Answer.REFUTE:
            self._refute(u.incarnation)
            self._prober.adjust_awareness(1)
        elif answer is Answer.REMIND:
            self._queue.put(self._self.update(self.name))

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
            self._members.add(m)
            self._changed(m, None, now)
            self._queue.put(u)
            self._catch_up.learned()
            return
        if not alive_wins(m, u):
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
        if not suspect_applies(m, u):
            return
        s = m.suspicion
        if m.state is State.SUSPECT and s is not None and u.incarnation == s.incarnation:
            # The same suspicion: a confirmation shortens the timeout and is passed on.
            if s.confirm(u.origin):
                if not s.checking:
                    self._schedule(m, s.wake_at())
                self._queue.put(u)
            return
        before = m.state
        m.state = State.SUSPECT
        m.incarnation = u.incarnation
        m.suspicion = Suspicion.begin(u.incarnation, u.origin, now, self.config, self.alive_count())
        self.counters.suspicions += 1
        self._schedule(m, m.suspicion.wake_at())
        self._changed(m, before, now)
        self._queue.put(Update(m.name, m.incarnation, State.SUSPECT, u.origin))

    def _apply_gone(self, m: Member, u: Update, now: float) -> None:
        if not gone_wins(m, u):
            return
        before = m.state
        m.state = u.state
        m.incarnation = u.incarnation
        m.suspicion = None
        self._changed(m, before, now)
        self._queue.put(Update(m.name, m.incarnation, m.state, u.origin))
        self._hints.forget(m.name)
        self._schedule(m, now + self.config.dead_reap_s)

    def _changed(self, m: Member, before: State | None, now: float) -> None:
        if before is None or before is not m.state:
            m.since = now
        self._members.moved(m, before)
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
                self._members.forget(name)
                self._generation.pop(name, None)
                self._queue.drop(name)

    def _suspicion_expired(self, m: Member, now: float) -> None:
        """No refutation reached us within the suspicion timeout: declare the suspect dead,
        or first take a last look at it (see `suspicion`)."""
        s = m.suspicion
        if s is not None and not s.checking and now < s.deadline():
            s.looked_early = True  # an early look (`Suspicion.wake_at`), then the real deadline
            if not s.probed_silent:
                self._prober.look_again(m.name)
            self._schedule(m, s.deadline())
            return
        if s is None or not s.wants_last_look() or self.leaving:
            self._declare_dead(m, now)
            return
        s.checking = True
        self._prober.look_again(m.name)
        self._schedule(m, last_look_deadline(now, self.config.probe_interval, self.awareness))

    def _declare_dead(self, m: Member, now: float) -> None:
        self.counters.deaths_declared += 1
        self._apply_gone(m, Update(m.name, m.incarnation, State.DEAD, self.name), now)

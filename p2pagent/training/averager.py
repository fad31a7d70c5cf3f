"""A member's averaging across rounds: round numbering, early and late parts, deadlines.

The driver calls ``begin`` when the user's loop asks to average, ``handle`` for every part
received, ``member_gone`` when membership declares a member dead, and ``tick`` at
``next_deadline()``; each returns the parts to send. ``take_events`` gives the finished
rounds and the refusals. Pure, like ``membership.swim``: time comes in as ``now``.

Round numbers need no leader either: a member starts its next round at one past the highest
round it finished or has seen a part for, so a member that restarted (its counter back at 0)
catches up with the run from the first part it receives.

Nor does a round need every member's view to agree on who takes part: a part whose group
differs from this member's by one participant settles the round on the smaller group, or
makes this member an observer of it when the one left out is itself (``reconcile.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from p2pagent.training.config import TrainingConfig
from p2pagent.training.deadlines import DeadlineEstimator
from p2pagent.training.groups import group_of
from p2pagent.training.messages import Event, Part, Phase, Refused, RoundDone, Send, Vector
from p2pagent.training.observe import ObservedRound
from p2pagent.training.reconcile import Resolution, resolve
from p2pagent.training.round import AveragingRound

Round = AveragingRound | ObservedRound

#: Early parts kept per future round, per member of the largest group.
EARLY_PARTS_PER_MEMBER = 4


class Averager:
    def __init__(
        self, me: str, run: str, spec: str, config: TrainingConfig, length: int | None = None
    ) -> None:
        self.me, self.run, self.spec = me, run, spec
        self.config = config
        #: Values in this run's parameter vector, when known: early parts (kept before their
        #: round begins, so not yet checked against a group) are bounded by it.
        self.length = length
        self._early_bytes = 0
        self.deadlines = DeadlineEstimator(config)
        self.current: Round | None = None
        #: The last finished round: answers late parts so stragglers end with the average.
        self.previous: Round | None = None
        #: The participants the current round's group was derived from (less those a
        #: peer's group left out since).
        self._participants: list[str] = []
        #: Group fingerprints of the current round that ``resolve`` found nothing for: not
        #: derived again for every part that names them.
        self._unresolved: set[str] = set()
        self.highest_seen = -1
        self.finished_round = -1
        self._early: dict[int, list[Part]] = {}
        self._events: list[Event] = []

    @property
    def busy(self) -> bool:
        return self.current is not None

    def next_round_no(self) -> int:
        return max(self.finished_round + 1, self.highest_seen)

    def begin(
        self, participants: Sequence[str], vector: Vector, weight: float, now: float
    ) -> list[Send]:
        """Starts the next round with the run's ``participants`` (the membership view) and
        this member's parameters and sample count."""
        if self.current is not None:
            raise RuntimeError("a round is already running; wait for its RoundDone")
        round_no = self.next_round_no()
        self.length = int(vector.shape[0])
        group = group_of(self.me, participants, self.run, round_no, self.config.group_size)
        rnd = AveragingRound(
            me=self.me,
            run=self.run,
            round_no=round_no,
            group=group,
            spec=self.spec,
            vector=vector,
            weight=weight,
            now=now,
            timeout=self.deadlines.timeout(),
            config=self.config,
        )
        self.current = rnd
        self._participants = sorted(set(participants) | {self.me})
        self._unresolved.clear()
        out = rnd.start()
        # Averages first: a late owner whose slice a backup already averaged must serve that
        # average rather than make its own from the early SCATTER parts.
        early = sorted(self._early.pop(round_no, []), key=lambda p: p.phase is Phase.SCATTER)
        self._early_bytes -= sum(p.nbytes for p in early)
        for part in early:
            out.extend(self._handle_current(part, now))
        for r in [r for r in self._early if r < round_no]:
            self._early_bytes -= sum(p.nbytes for p in self._early.pop(r))
        self._collect()
        return out

    def handle(self, part: Part, now: float) -> list[Send]:
        if part.run != self.run:
            self._events.append(
                Refused(part.run, part.round_no, part.sender, f"unknown run {part.run!r}")
            )
            return []
        out: list[Send] = []
        cur = self.current
        if cur is not None and part.round_no == cur.round_no:
            out = self._handle_current(part, now)
        elif self.previous is not None and part.round_no == self.previous.round_no:
            out = self.previous.handle(part, now)
        elif part.round_no > (cur.round_no if cur is not None else self.finished_round):
            self.highest_seen = max(self.highest_seen, part.round_no)
            self._keep_early(part)
            if cur is not None and part.round_no >= cur.round_no + 2:
                # The run is two rounds past this member's (it restarted, or was stopped for
                # long): nobody will answer this round any more. End it now with what it
                # has; the next round starts at the run's, where late parts are answered
                # with the averages made, so this member first fetches the run's values.
                cur.abandon(now, behind=True)
        else:
            self._events.append(
                Refused(
                    self.run,
                    part.round_no,
                    part.sender,
                    f"round {part.round_no} is over here (this member is at round "
                    f"{self.next_round_no()})",
                )
            )
        self._collect()
        return out

    def _handle_current(self, part: Part, now: float) -> list[Send]:
        cur = self.current
        assert cur is not None
        if (
            isinstance(cur, AveragingRound)
            and part.group != cur.group_key
            and part.spec == self.spec
            and cur.done is None
            and not cur.reduced
            and part.group not in self._unresolved
        ):
            found = resolve(
                me=self.me,
                participants=self._participants,
                group=cur.group,
                run=self.run,
                round_no=cur.round_no,
                group_size=self.config.group_size,
                sender=part.sender,
                sender_group=part.group,
            )
            if found is not None:
                out = self._settle(cur, found, now)
                return out + self._handle_current(part, now)
            self._unresolved.add(part.group)
        return cur.handle(part, now)

    def _settle(self, cur: AveragingRound, found: Resolution, now: float) -> list[Send]:
        """Replaces the current round by the same round in the sender's (smaller) group, or
        by an observation of it; the parts already sent under the old group are refused by
        the members that settled, who get the new ones."""
        self._events.extend(cur.events)
        cur.events.clear()
        self._participants = [n for n in self._participants if n != found.left_out]
        self._unresolved.clear()
        new: Round
        if found.observe:
            new = ObservedRound(
                me=self.me, run=self.run, round_no=cur.round_no, group=found.group,
                spec=self.spec, vector=cur.vector, weight=cur.weight, started=cur.started,
                timeout=cur.timeout, config=self.config,
                asked=[n for n in cur.group if n != self.me], bytes_sent=cur.bytes_sent,
            )  # fmt: skip
            self.current = new
            return new.start()
        new = AveragingRound(
            me=self.me, run=self.run, round_no=cur.round_no, group=found.group, spec=self.spec,
            vector=cur.vector, weight=cur.weight, now=now, timeout=cur.timeout,
            config=self.config,
        )  # fmt: skip
        new.bytes_sent = cur.bytes_sent
        self.current = new
        out = new.start()
        # Members that sent this member a part but are not in the new group still want the
        # round's averages (they are observers now, or will be).
        heard = set(cur.own) | {s for parts in cur.backup_in.values() for s in parts}
        out.extend(new.adopt_listeners(sorted(heard - set(new.group) - {self.me})))
        out.extend(new.adopt_listeners(sorted(cur.listeners)))
        for name in sorted(cur.gone & set(new.group)):
            out.extend(new.member_gone(name, now))
        return out

    def member_gone(self, name: str, now: float) -> list[Send]:
        out = self.current.member_gone(name, now) if self.current is not None else []
        self._collect()
        return out

    def tick(self, now: float) -> list[Send]:
        out = self.current.tick(now) if self.current is not None else []
        self._collect()
        return out

    def next_deadline(self) -> float:
        return self.current.next_deadline() if self.current is not None else float("inf")

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _early_budget(self) -> float:
        """Bytes of early parts kept at most: ``max_rounds_ahead + 1`` times twice a whole
        vector (a round's parts for this member add up to one or two vectors); unbounded by
        bytes only while the vector's size is unknown (the driver always gives it)."""
        if self.length is None:
            return float("inf")
        return 2 * (self.config.max_rounds_ahead + 1) * self.length * 4

    def _keep_early(self, part: Part) -> None:
        """Keeps a part of a round this member has not begun. Only the highest round seen
        is worth keeping: the next round begins there (``next_round_no``)."""
        for r in [r for r in self._early if r < self.highest_seen]:
            self._early_bytes -= sum(p.nbytes for p in self._early.pop(r))
        reason = ""
        kept = self._early.get(part.round_no, [])
        if part.round_no < self.highest_seen:
            reason = f"round {part.round_no} is behind the run's round {self.highest_seen}"
        elif self._early_bytes + part.nbytes > self._early_budget():
            reason = (
                f"early parts already hold {self._early_bytes} bytes, the most kept for a run "
                f"of {self.length} values"
            )
        elif len(kept) >= EARLY_PARTS_PER_MEMBER * self.config.group_size:
            reason = f"round {part.round_no} already has {len(kept)} parts waiting"
        if reason:
            self._events.append(Refused(self.run, part.round_no, part.sender, reason))
            return
        self._early.setdefault(part.round_no, []).append(part)
        self._early_bytes += part.nbytes

    def _collect(self) -> None:
        for rnd in (self.previous, self.current):
            if rnd is not None:
                self._events.extend(rnd.events)
                rnd.events.clear()
        cur = self.current
        if cur is not None and cur.done is not None:
            for delay in cur.arrivals:
                self.deadlines.record(delay)
            self.finished_round = cur.round_no
            self.previous = cur
            self.current = None

    def last_done(self) -> RoundDone | None:
        return self.previous.done if self.previous is not None else None

"""One averaging round of one member: reduce-scatter then all-gather inside its group, with
a backup owner for every slice whose owner died or missed the deadline.

Member ``i`` of a group of ``k`` owns slice ``i`` of the flattened parameters. The round:

- start: send slice ``j`` of the local vector to member ``j`` (SCATTER), for every ``j != i``;
- as owner: when every expected member's slice ``i`` arrived, or at deadline D1, average the
  valid ones weighted by sample count and send the result to every other member (GATHER);
- as receiver: when all ``k`` averaged slices are here the round is done;
- at D2 (or as soon as membership says an owner died), for each slice ``j`` still missing,
  send the local slice ``j`` to its backup owner, the next member after ``j`` in the group
  that is not known gone (RECOVER); a backup that already holds slice ``j``'s average answers
  with it at once (RECOVERED), otherwise it averages what its members sent (its own local
  slice included) when all expected arrived or at D3;
- at D4 whatever is still missing keeps the local values (the round is then not complete).

A member outside the group that sends a part for the round (its view of the run differs:
``reconcile.py``, ``observe.py``) is kept as a listener and sent the averages this member
makes, so it ends the round holding what the group holds without having averaged in.

Each member sends ``2 (k - 1) / k`` of the parameters in a fault-free round: the bandwidth
bound of all-reduce. Deadlines are ``start + n x timeout`` with the timeout fixed at the start
from measured arrival times (``deadlines.py``). Pure: time is passed in, nothing is awaited.
"""

from __future__ import annotations

from collections.abc import Sequence

from p2pagent.training.config import TrainingConfig
from p2pagent.training.groups import group_id
from p2pagent.training.messages import Event, Part, Phase, Refused, RoundDone, Send, Vector
from p2pagent.training.reduce import (
    Contribution,
    compress,
    data_problem,
    outliers,
    slice_bounds,
    weight_problem,
    weighted_average,
)


class AveragingRound:
    def __init__(
        self,
        *,
        me: str,
        run: str,
        round_no: int,
        group: Sequence[str],
        spec: str,
        vector: Vector,
        weight: float,
        now: float,
        timeout: float,
        config: TrainingConfig,
    ) -> None:
        import numpy as np  # here, not at the top: only a node that averages needs numpy

        if me not in group:
            raise ValueError(f"{me} is not in its own group")
        self.me, self.run, self.round_no, self.spec = me, run, round_no, spec
        self.group = tuple(group)
        self.group_key = group_id(self.group)
        self.config = config
        self.k = len(self.group)
        self.index = self.group.index(me)
        self.vector = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        self.weight = float(weight)
        self.bounds = slice_bounds(self.vector.shape[0], self.k)
        self.started = now
        self.timeout = timeout
        # D1 reduce, D2 ask backups, D3 backups reduce, D4 give up (slack for start skew).
        self.deadlines = [now + n * timeout for n in (1, 2, 3, 5)]
        self.gone: set[str] = set()
        #: Members whose slice never reached this owner by D1: presumed dead or late, so
        #: neither picked as a backup nor waited for as a backup's contributor.
        self.silent: set[str] = set()
        self.result: list[Vector | None] = [None] * self.k
        #: Contributions to this member's own slice (itself included).
        self.own: dict[str, Contribution] = {me: Contribution(self.weight, self._local(self.index))}
        self.reduced = False
        #: Slices this member asked a backup for: slice -> backup's name.
        self.asked: dict[int, str] = {}
        #: As backup: slice -> contributions received (own included once it is missing here).
        self.backup_in: dict[int, dict[str, Contribution]] = {}
        self.backup_done: set[int] = set()
        #: As backup: slice -> when this member started backing it up. It waits one phase
        #: timeout from then at most: members that hold the owner's average never ask.
        self.backup_due: dict[int, float] = {}
        self.recovered: set[int] = set()
        self.arrivals: list[float] = []
        self.events: list[Event] = []
        self.bytes_sent = 0
        self.done: RoundDone | None = None
        #: Members outside the group that asked for its averages (by sending a part).
        self.listeners: set[str] = set()
        self._last_tick = -float("inf")
        self._heard_from_peer = False
        self._behind = False

    # ---- inputs -----------------------------------------------------------------------------

    def start(self) -> list[Send]:
        out: list[Send] = []
        if self.k == 1:
            self.result[0] = self.vector.copy()
            self._finish(self.started)
            return out
        for j, name in enumerate(self.group):
            if j != self.index:
                data = compress(self._local(j), self.config.compression)
                out.append(self._send(name, Phase.SCATTER, j, self.weight, data))
        return out

    def handle(self, part: Part, now: float) -> list[Send]:
        out: list[Send] = []
        if (
            part.sender not in self.group
            and part.phase is Phase.SCATTER
            and part.spec == self.spec
            and part.run == self.run
        ):
            return self.adopt_listeners([part.sender])
        problem = self._problem(part)
        if problem is not None:
            self._refuse(part.sender, problem)
            return out
        j = part.slice_index
        if part.phase is Phase.SCATTER:
            if self.done is not None or self.reduced:
                # Late: answer with the average already made, so the sender still ends the
                # round holding what everyone else holds.
                if self.result[self.index] is not None:
                    out.append(self._gather_to(part.sender))
                return out
            self.arrivals.append(now - self.started)
            self.own[part.sender] = Contribution(part.weight, part.data)
            if self._expected_own() <= self.own.keys():
                out.extend(self._reduce_own())
        elif part.phase is Phase.GATHER:
            if j not in self.asked and self.result[j] is None:
                self.result[j] = part.data
                self._heard_from_peer = True
        elif part.phase is Phase.RECOVER:
            held = self.result[j]
            if held is not None:
                # Already averaged (by its owner, or here as backup): answer with it, so the
                # asker ends the round holding what the others hold.
                out.append(self._send(part.sender, Phase.RECOVERED, j, part.weight, held))
            elif self.done is None:
                self.backup_in.setdefault(j, {})[part.sender] = Contribution(part.weight, part.data)
                out.extend(self._maybe_reduce_backup(j, now, force=False))
        elif part.phase is Phase.RECOVERED and self.result[j] is None:
            self.result[j] = part.data
            self._heard_from_peer = True
            self.recovered.add(j)
            if j == self.index and not self.reduced:
                # This member was late and a backup averaged its slice: serve that average.
                self.reduced = True
                out.extend(
                    self._gather_to(n)
                    for n in sorted(self.own.keys() | self.listeners)
                    if n != self.me
                )
        self._maybe_finish(now)
        return out

    def adopt_listeners(self, names: list[str]) -> list[Send]:
        """Members outside the group that want its averages: sent every average this member
        made so far, and the later ones as they are made. At most ``group_size`` of them."""
        out: list[Send] = []
        for name in names:
            if name in self.group or name in self.listeners:
                continue
            if len(self.listeners) >= self.config.group_size:
                self._refuse(name, f"round {self.round_no} already has {len(self.listeners)} "
                                   "members outside its group listening")  # fmt: skip
                continue
            self.listeners.add(name)
            if self.reduced and self.result[self.index] is not None:
                out.append(self._gather_to(name))
            for j in sorted(self.backup_done):
                held = self.result[j]
                if held is not None:
                    out.append(self._send(name, Phase.RECOVERED, j, 0.0, held))
        return out

    def member_gone(self, name: str, now: float) -> list[Send]:
        """Membership says ``name`` died or left: stop waiting for it."""
        out: list[Send] = []
        if name not in self.group or name == self.me or self.done is not None:
            return out
        self.gone.add(name)
        if not self.reduced and self._expected_own() <= self.own.keys():
            out.extend(self._reduce_own())
        j = self.group.index(name)
        if self.result[j] is None:
            out.extend(self._ask_backup(j, now))
        for s, backup in list(self.asked.items()):
            if backup == name and self.result[s] is None:
                out.extend(self._ask_backup(s, now))
        for s in list(self.backup_in):
            out.extend(self._maybe_reduce_backup(s, now, force=False))
        self._maybe_finish(now)
        return out

    def next_deadline(self) -> float:
        if self.done is not None:
            return float("inf")
        due = [t for j, t in self.backup_due.items() if j not in self.backup_done]
        for d in self.deadlines:
            if d > self._last_tick:
                return min([d, *due])
        return min([self.deadlines[-1], *due])

    def tick(self, now: float) -> list[Send]:
        out: list[Send] = []
        if self.done is not None:
            return out
        d1, d2, d3, d4 = self.deadlines
        self._last_tick = now
        if now >= d1 and not self.reduced:
            out.extend(self._reduce_own())
        if now >= d2:
            for j in range(self.k):
                if self.result[j] is None and j not in self.asked:
                    out.extend(self._ask_backup(j, now))
        for j, due in list(self.backup_due.items()):
            if now >= due:
                out.extend(self._maybe_reduce_backup(j, now, force=True))
        if now >= d3:
            for j in list(self.backup_in):
                out.extend(self._maybe_reduce_backup(j, now, force=True))
            for j, backup in list(self.asked.items()):
                if self.result[j] is None and backup != self.me:
                    # The backup did not answer: presume it gone too and ask the next one.
                    self.silent.add(backup)
                    out.extend(self._ask_backup(j, now))
        if now >= d4:
            self._finish(now)
        else:
            self._maybe_finish(now)
        return out

    def abandon(self, now: float, behind: bool = False) -> None:
        """Ends the round now: slices without an average keep the local values; ``behind``:
        because the run is past it."""
        self._behind = behind
        self._finish(now)

    # ---- the steps --------------------------------------------------------------------------

    def _expected_own(self) -> set[str]:
        return set(self.group) - self.gone

    def _reduce_own(self) -> list[Send]:
        self.reduced = True
        self.silent = self._expected_own() - self.own.keys()
        for sender, reason in outliers(self.own, self.config).items():
            del self.own[sender]
            self._refuse(sender, reason)
        avg, _ = weighted_average(self.own)
        self.result[self.index] = compress(avg, self.config.compression)
        to = [n for n in self.group if n != self.me and n not in self.gone]
        return [self._gather_to(n) for n in to + sorted(self.listeners)]

    def _gather_to(self, name: str) -> Send:
        data = self.result[self.index]
        assert data is not None
        total = sum(c.weight for c in self.own.values())
        return self._send(name, Phase.GATHER, self.index, total, data)

    def _backup_for(self, j: int) -> str:
        """The next member after ``j`` (cyclic) not known gone or silent: the same member for
        everyone whose view of the round's failures is the same."""
        for step in range(1, self.k):
            name = self.group[(j + step) % self.k]
            if name not in self.gone and name not in self.silent:
                return name
        return self.me

    def _ask_backup(self, j: int, now: float) -> list[Send]:
        backup = self._backup_for(j)
        self.asked[j] = backup
        local = compress(self._local(j), self.config.compression)
        if backup == self.me:
            self.backup_in.setdefault(j, {})[self.me] = Contribution(self.weight, self._local(j))
            self.backup_due.setdefault(j, now + self.timeout)
            return self._maybe_reduce_backup(j, now, force=False)
        return [self._send(backup, Phase.RECOVER, j, self.weight, local)]

    def _maybe_reduce_backup(self, j: int, now: float, force: bool) -> list[Send]:
        parts = self.backup_in.get(j, {})
        if j in self.backup_done or self.me not in parts:
            # This member reduces slice j only once it misses slice j itself.
            return [] if not force or self.result[j] is not None else self._ask_backup_self(j, now)
        owner = self.group[j]
        expected = set(self.group) - self.gone - self.silent - {owner}
        if not force and not expected <= parts.keys():
            return []
        self.backup_done.add(j)
        for sender, reason in outliers(parts, self.config).items():
            del parts[sender]
            self._refuse(sender, reason)
        avg, total = weighted_average(parts)
        avg = compress(avg, self.config.compression)
        self.result[j] = avg
        self.recovered.add(j)
        # The owner too, in case it is alive but late: it then serves this average as its
        # slice instead of making another one, so late and early members still agree.
        owner_too = {owner} - self.gone
        return [
            self._send(s, Phase.RECOVERED, j, total, avg)
            for s in sorted(parts.keys() | owner_too | self.listeners)
            if s != self.me
        ]

    def _ask_backup_self(self, j: int, now: float) -> list[Send]:
        # Others asked this member to back up slice j before it noticed j missing itself.
        self.asked[j] = self.me
        self.backup_in.setdefault(j, {})[self.me] = Contribution(self.weight, self._local(j))
        return self._maybe_reduce_backup(j, now, force=True)

    def _maybe_finish(self, now: float) -> None:
        if self.done is None and all(r is not None for r in self.result):
            self._finish(now)

    def _finish(self, now: float) -> None:
        import numpy as np

        if self.done is not None:
            return
        kept = tuple(j for j in range(self.k) if self.result[j] is None)
        pieces = [r if r is not None else self._local(j) for j, r in enumerate(self.result)]
        vector = np.concatenate(pieces) if pieces else self.vector.copy()
        self.done = RoundDone(
            run=self.run,
            round_no=self.round_no,
            group=self.group,
            vector=vector.astype(np.float32, copy=False),
            averaged_with=tuple(sorted(self.own)),
            recovered=tuple(sorted(self.recovered)),
            kept_local=kept,
            started=self.started,
            finished=now,
            phase_timeout=self.timeout,
            bytes_sent=self.bytes_sent,
            # Complete: every slice averaged, and with someone (alone is not averaging).
            complete=not kept and (self.k == 1 or len(self.own) > 1 or self._heard_from_peer),
            behind=self._behind,
        )
        self.events.append(self.done)

    # ---- helpers ----------------------------------------------------------------------------

    def _local(self, j: int) -> Vector:
        a, b = self.bounds[j]
        return self.vector[a:b]

    def _send(self, to: str, phase: Phase, j: int, weight: float, data: Vector) -> Send:
        self.bytes_sent += int(data.nbytes)
        part = Part(
            self.run, self.round_no, self.group_key, self.me, phase, j, weight, self.spec, data
        )
        return Send(to, part)

    def _refuse(self, sender: str, reason: str) -> None:
        self.events.append(Refused(self.run, self.round_no, sender, reason))

    def _problem(self, part: Part) -> str | None:
        if part.spec != self.spec:
            return (
                f"parameter fingerprint {part.spec[:16]} differs from this member's "
                f"{self.spec[:16]}: the sender's model has other names, shapes or dtypes"
            )
        if part.sender not in self.group or part.sender == self.me:
            return f"{part.sender} is not in this member's group for round {self.round_no}"
        if part.group != self.group_key:
            return "the sender derived another group for this round (membership views differ)"
        j = part.slice_index
        if not 0 <= j < self.k:
            return f"slice index {j} is out of range for a group of {self.k}"
        if part.phase is Phase.SCATTER and j != self.index:
            return f"slice {j} was sent to the owner of slice {self.index}"
        if part.phase is Phase.GATHER and self.group[j] != part.sender:
            return f"slice {j}'s average came from {part.sender}, not its owner"
        if part.phase in (Phase.SCATTER, Phase.RECOVER):
            problem = weight_problem(part.weight, self.config)
            if problem is not None:
                return problem
        a, b = self.bounds[j]
        return data_problem(part.data, b - a)

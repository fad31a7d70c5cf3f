"""A round this member only observes: the group averages without it, and it takes the
group's averages, slice by slice, from their owners (or a backup owner).

A member gets here when its peers' groups for the round leave it out (``reconcile.py``): it
is not in their membership views yet, typically right after it (re)joined the run. Its own
parts went to the owners at the start of the round; an owner that receives a part from a
member outside its group keeps the sender as a listener and sends it its slice's average
(``round.AveragingRound``), so the observer ends the round holding exactly what the group
holds: a restarted member fetches the run's average before it contributes again.

Pure, like the round: time is passed in, nothing is awaited.
"""

from __future__ import annotations

from collections.abc import Sequence

from p2pagent.training.config import TrainingConfig
from p2pagent.training.groups import group_id
from p2pagent.training.messages import Event, Part, Phase, Refused, RoundDone, Send, Vector
from p2pagent.training.reduce import compress, data_problem, slice_bounds


class ObservedRound:
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
        started: float,
        timeout: float,
        config: TrainingConfig,
        asked: Sequence[str],
        bytes_sent: int,
    ) -> None:
        import numpy as np

        if me in group:
            raise ValueError(f"{me} observes a group it is in")
        self.me, self.run, self.round_no, self.spec = me, run, round_no, spec
        self.group = tuple(group)
        self.group_key = group_id(self.group)
        self.config = config
        self.k = len(self.group)
        self.vector = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        self.weight = float(weight)
        self.bounds = slice_bounds(self.vector.shape[0], self.k)
        self.started = started
        self.timeout = timeout
        #: Give up at the round's last deadline (as a member of the group would).
        self.deadline = started + 5 * timeout
        #: Members that already have a part from this member in this round (so they know
        #: it listens); the others are sent one at ``start``.
        self.asked = set(asked)
        self.result: list[Vector | None] = [None] * self.k
        self.arrivals: list[float] = []
        self.events: list[Event] = []
        self.bytes_sent = bytes_sent
        self.done: RoundDone | None = None
        self._behind = False

    def start(self) -> list[Send]:
        """Asks the owners that have no part from this member yet for their averages: a
        part of the owner's own slice, which the owner answers as it answers any member
        outside its group (the data is not averaged in)."""
        out = []
        for j, owner in enumerate(self.group):
            if owner not in self.asked:
                a, b = self.bounds[j]
                data = compress(self.vector[a:b], self.config.compression)
                self.bytes_sent += int(data.nbytes)
                part = Part(
                    self.run, self.round_no, self.group_key, self.me, Phase.SCATTER, j,
                    self.weight, self.spec, data,
                )  # fmt: skip
                out.append(Send(owner, part))
        return out

    def handle(self, part: Part, now: float) -> list[Send]:
        problem = self._problem(part)
        if problem is not None:
            self.events.append(Refused(self.run, self.round_no, part.sender, problem))
            return []
        if self.done is None and self.result[part.slice_index] is None:
            self.result[part.slice_index] = part.data
            if all(r is not None for r in self.result):
                self._finish(now)
        return []

    def member_gone(self, name: str, now: float) -> list[Send]:
        return []

    def next_deadline(self) -> float:
        return float("inf") if self.done is not None else self.deadline

    def tick(self, now: float) -> list[Send]:
        if now >= self.deadline:
            self._finish(now)
        return []

    def abandon(self, now: float, behind: bool = False) -> None:
        self._behind = behind
        self._finish(now)

    def _finish(self, now: float) -> None:
        import numpy as np

        if self.done is not None:
            return
        kept = tuple(j for j in range(self.k) if self.result[j] is None)
        pieces = [
            r if r is not None else self.vector[a:b]
            for r, (a, b) in zip(self.result, self.bounds, strict=True)
        ]
        self.done = RoundDone(
            run=self.run,
            round_no=self.round_no,
            group=self.group,
            vector=np.concatenate(pieces).astype(np.float32, copy=False),
            averaged_with=(),
            recovered=(),
            kept_local=kept,
            started=self.started,
            finished=now,
            phase_timeout=self.timeout,
            bytes_sent=self.bytes_sent,
            # Complete: it holds the group's average of every slice (none of its own).
            complete=not kept,
            behind=self._behind,
        )
        self.events.append(self.done)

    def _problem(self, part: Part) -> str | None:
        if part.spec != self.spec:
            return "parameter fingerprint differs from this member's"
        if part.group != self.group_key or part.sender not in self.group:
            return (
                f"this member only observes round {self.round_no} (the group averages "
                "without it) and takes its averages only"
            )
        j = part.slice_index
        if not 0 <= j < self.k:
            return f"slice index {j} is out of range for a group of {self.k}"
        if part.phase is Phase.GATHER and self.group[j] != part.sender:
            return f"slice {j}'s average came from {part.sender}, not its owner"
        if part.phase not in (Phase.GATHER, Phase.RECOVERED):
            return (
                f"this member only observes round {self.round_no} (the group averages "
                "without it) and takes its averages only"
            )
        a, b = self.bounds[j]
        return data_problem(part.data, b - a)

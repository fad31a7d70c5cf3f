"""What averaging members send each other, and what a round reports to the application.

A round is four kinds of part. SCATTER: a member's slice ``j`` of its local parameters, to
the slice's owner (member ``j`` of the group). GATHER: the owner's weighted average of slice
``j``, to every member. RECOVER: when an owner died or missed the deadline, a member's local
slice ``j`` to the slice's backup owner. RECOVERED: the backup's average of slice ``j``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

#: A string at run time: the training modules import numpy only where they compute, so a
#: node that never averages (most nodes at start-up) does not load it.
Vector: TypeAlias = "npt.NDArray[np.float32]"


class Phase(enum.Enum):
    SCATTER = 1
    GATHER = 2
    RECOVER = 3
    RECOVERED = 4


@dataclass(frozen=True, eq=False)
class Part:
    run: str
    round_no: int
    #: ``groups.group_id`` of the group the sender derived.
    group: str
    sender: str
    phase: Phase
    slice_index: int
    #: Sample count behind ``data`` (SCATTER/RECOVER), or the total of the average
    #: (GATHER/RECOVERED).
    weight: float
    #: Fingerprint of the run's parameter names, shapes and dtypes (``spec.fingerprint``).
    spec: str
    data: Vector

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


@dataclass(frozen=True, eq=False)
class Send:
    to: str
    part: Part


@dataclass(frozen=True)
class Refused:
    """A part that was not averaged in, and why; the driver logs it with the sender's
    verified identity and counts it."""

    run: str
    round_no: int
    sender: str
    reason: str


@dataclass(frozen=True, eq=False)
class RoundDone:
    """One round as this member finished it."""

    run: str
    round_no: int
    group: tuple[str, ...]
    vector: Vector
    #: Members whose contributions reached this member's own slice (itself included).
    averaged_with: tuple[str, ...]
    #: Slice indices whose owner was missing and whose average came from a backup owner.
    recovered: tuple[int, ...]
    #: Slice indices no average arrived for: this member kept its own values there.
    kept_local: tuple[int, ...]
    started: float
    finished: float
    #: The phase timeout the round ran with (seconds).
    phase_timeout: float
    #: Parameter bytes this member sent in the round.
    bytes_sent: int
    #: True when every slice was averaged (by its owner or a backup) with at least one other
    #: member; False when a slice kept local values or no other member was heard from.
    complete: bool = field(default=True)
    #: Ended at once because the run was two rounds past it (this member restarted, or was
    #: stopped for long): nothing was averaged in it, and the next round starts at the run's.
    behind: bool = field(default=False)


Event = Refused | RoundDone

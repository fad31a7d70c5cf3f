"""What a member does when a peer's part names another group for the same round.

Groups come from each member's membership view, and views differ for a moment whenever a
participant comes or goes: gossip reaches members at different times. A restarted member
is the usual case: it is back in some views and not yet in others, and rounds that last less
than gossip needs would be refused as "another group" one after another.

The rule is "the smaller group wins": a member whose group differs from a peer's only by one
participant the peer does not count (one the peer has not heard of yet, or already knows
gone) takes the peer's group for the round, without that participant. Groups only shrink
under this rule, so the members of a round settle on one group within a few parts, without
waiting for a deadline. When the participant the peer does not count is this member itself,
it observes the round instead: it takes the group's averages without contributing (what a
member that is not yet in everyone's view can do), so it ends the round holding what the
group holds.

A part only carries a fingerprint of its sender's group (``groups.group_id``), so candidates
are derived from this member's own participant list, one participant left out at a time.
Pure: no clock, no network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from p2pagent.training.groups import derive_groups, group_id


@dataclass(frozen=True)
class Resolution:
    #: The participant the sender's view does not count this round.
    left_out: str
    #: The sender's group: this member's group for the round from now on (``observe``:
    #: a group this member is not in, whose averages it takes).
    group: tuple[str, ...]

    @property
    def observe(self) -> bool:
        return False


@dataclass(frozen=True)
class Observe(Resolution):
    @property
    def observe(self) -> bool:
        return True


def resolve(
    *,
    me: str,
    participants: Sequence[str],
    group: Sequence[str],
    run: str,
    round_no: int,
    group_size: int,
    sender: str,
    sender_group: str,
) -> Resolution | None:
    """How this member's round (``group``, derived from ``participants``) joins the
    sender's, whose part names group fingerprint ``sender_group``; None when the sender's
    group is not this member's group less one participant (then the part is refused and the
    deadlines settle the round)."""
    if sender not in group or sender == me:
        return None
    everyone = sorted(set(participants) | {me})
    for left_out in group:
        if left_out == sender:
            continue
        rest = [n for n in everyone if n != left_out]
        # The group the sender derives without ``left_out``: the one holding the sender,
        # which holds this member too unless this member is the one left out.
        candidate = next(g for g in derive_groups(rest, run, round_no, group_size) if sender in g)
        if group_id(candidate) != sender_group:
            continue
        if left_out == me:
            return Observe(left_out, candidate)
        if me in candidate:
            return Resolution(left_out, candidate)
    return None

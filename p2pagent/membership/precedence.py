"""Which claim about a member wins: the precedence of alive, suspect, dead and left.

Only a member raises its own incarnation, so a claim of a higher incarnation is newer news
than anything said of a lower one. Within one incarnation, Suspect(i) beats Alive(i), Dead(i)
and Left(i) beat both, and Left(i) beats Dead(i): the member said so itself, where "dead" is
someone's guess. A gone (dead or left) member is a tombstone nothing else replaces, so stale
Alive claims cannot resurrect it; only its own higher incarnation brings it back.

Claims about this member itself are not applied but answered (`answer_about_me`): it is the
one member that knows, and the only one allowed to raise its incarnation.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

from p2pagent.membership.members import Member
from p2pagent.membership.messages import State, Update


def alive_wins(known: Member, claim: Update) -> bool:
    """An Alive claim replaces what we know only with a higher incarnation (a refutation, a
    restart or a tag change)."""
    return claim.incarnation > known.incarnation


def suspect_applies(known: Member, claim: Update) -> bool:
    """A Suspect claim of at least the known incarnation suspects an alive or suspect member;
    of the same incarnation as a running suspicion, it may confirm it (see `suspicion`)."""
    return claim.incarnation >= known.incarnation and not known.state.gone


def gone_wins(known: Member, claim: Update) -> bool:
    """A Dead or Left claim of at least the known incarnation ends an alive or suspect member.
    Between the two gone states only one change: a departure the member announced itself
    replaces our guess that it died (if we missed its leave and probed it dead first), so
    every member ends up saying "left"."""
    if claim.incarnation < known.incarnation:
        return False
    return not known.state.gone or (known.state is State.DEAD and claim.state is State.LEFT)


def outdated(known: Member, claim: Update) -> bool:
    """A Suspect or Dead claim about a member we know alive at a higher incarnation: the
    sender missed its refutation, and it is told directly (`Swim.handle`). Without that, a
    member that adopted the stale suspicion after the refutation's epidemic had died out kept
    it for the longest suspicion timeout (``suspicion_max_mult`` times the minimum, 43 s at
    N = 64: nothing confirms a stale rumour) before its last look: the 40.8 s joins of 64
    daemons started at once (issue 28, bench/RESULTS.md)."""
    return (
        claim.state in (State.SUSPECT, State.DEAD)
        and known.state is State.ALIVE
        and claim.incarnation < known.incarnation
    )


def corrections(claims: Iterable[Update], known: Callable[[str], Member | None]) -> list[Update]:
    """What to tell the sender of ``claims`` at once: the Alive update of every member (this
    one included) it called suspect or dead at an older incarnation than ``known`` gives. One
    message to the sender only; push-pull tables need none (they go both ways)."""
    news: list[Update] = []
    for claim in claims:
        m = known(claim.name)
        if m is not None and outdated(m, claim):
            news.append(m.update(m.name))
    return news


def as_relayed(claim: Update) -> Update:
    """A claim as merged from a push-pull table. A remote death is only a suspicion here: if
    it was a partition, the member gets the suspicion timeout to refute rather than being
    buried at once. The table does not say who suspected, and the sender most likely only
    relayed it: the suspicion carries no origin, so it confirms nothing anywhere."""
    if claim.state is State.DEAD or claim.state is State.SUSPECT:
        return Update(claim.name, claim.incarnation, State.SUSPECT, "", claim.address, claim.tags)
    return claim


class Answer(enum.Enum):
    """What this member does about a claim about itself."""

    #: Nothing to do: news we already outbid, or we are leaving.
    IGNORE = "ignore"
    #: A stale life of ours claims a higher incarnation: outbid it.
    OUTBID = "outbid"
    #: We are suspected or declared dead: refute with a higher incarnation, and take it as a
    #: sign that our own messages may be late (Lifeguard).
    REFUTE = "refute"
    #: A suspicion or death of an earlier incarnation: the sender missed our refutation. Queue
    #: our current Alive afresh, so the reply to this very message carries it back.
    REMIND = "remind"


def answer_about_me(my_incarnation: int, claim: Update, leaving: bool) -> Answer:
    if leaving:
        return Answer.IGNORE
    if claim.state is State.ALIVE:
        return Answer.OUTBID if claim.incarnation > my_incarnation else Answer.IGNORE
    return Answer.REFUTE if claim.incarnation >= my_incarnation else Answer.REMIND

"""One member's suspicion of another, and the Lifeguard rules that end it.

A suspicion exists so that a member that is only slow, or behind a lossy link, gets time to
refute before it is declared dead. How long, and what shortens it, decides both how fast a
crash is detected and how often a live member is buried, so the rules live here together
(the formulas themselves are in `timing`):

* Timeout: it starts at ``suspicion_max_mult`` times memberlist's minimum and shrinks towards
  the minimum as independent members confirm (Lifeguard).
* Confirmations: only a member whose own probe of the suspect failed confirms; its name is the
  claim's origin. A suspicion merged from a push-pull table has no origin (the table does not
  say who suspected, the sender most likely only relayed it), so it confirms nothing. The first
  suspector is not a confirmation, and only the ``k`` expected ones count (as in memberlist):
  relays must not shrink the timeout to its minimum and bury a live member.
* Buddy: a ping to a suspect carries the suspicion, so the suspect can refute at once.
* Last look: when the timeout runs out at a member that only heard the rumour (its own probes
  of the suspect did not fail), it probes the suspect itself, buddy included, before declaring
  it dead. The refutation's epidemic can miss a member (each update is sent a bounded number of
  times, and every member holds the rumour, so one miss in N^2 matters); then the suspect's ack
  carries its refutation. A member that really crashed fails this probe, and by then the
  probers that suspected it have usually declared it dead everywhere. Without an answer within
  ``LAST_LOOK_PROBE_INTERVALS`` probe intervals it is declared dead anyway.
* Early look: a member that only heard the rumour also probes the suspect next (in place of
  its next round-robin target, buddy included) once the minimum timeout has passed, when its
  deadline is later. A rumour no one else confirms lasts the longest timeout, 43 s at
  N = 64, and a refutation that missed this member came only with the last look then: 64
  daemons started at once took 34-41 s to agree when one member missed one refutation
  (issue 28). A suspect that answers the early look with its refutation is alive at once;
  one that does not is judged as any probe's target is (its failure confirms the suspicion).
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pagent.membership import timing
from p2pagent.membership.config import MembershipConfig
from p2pagent.membership.messages import State, Update

#: Probe intervals (stretched by local health awareness) a last look waits for the suspect's
#: answer before declaring it dead anyway.
LAST_LOOK_PROBE_INTERVALS = 3


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
    #: The early look (at the minimum timeout, before a longer deadline) was taken.
    looked_early: bool = False

    @classmethod
    def begin(
        cls, incarnation: int, origin: str, now: float, config: MembershipConfig, members: int
    ) -> Suspicion:
        """A fresh suspicion of ``incarnation`` in a cluster of ``members`` reachable members;
        ``origin`` is the suspector, or "" when the claim came without one."""
        lo = timing.suspicion_min(config.suspicion_mult, members, config.probe_interval)
        return cls(
            incarnation,
            now,
            lo,
            lo * config.suspicion_max_mult,
            timing.expected_confirmations(config.suspicion_mult, members),
            {origin} if origin else set(),
        )

    def confirmed(self) -> int:
        """Independent confirmations beyond the first suspector (a suspicion learned second-hand
        from a push-pull table has no suspector of its own: the first one named is not one)."""
        return max(0, len(self.confirmations) - 1)

    def confirm(self, origin: str) -> bool:
        """Counts ``origin``'s suspicion of the same incarnation as a confirmation. False when
        it adds nothing: no origin, already counted, or the ``k`` expected ones are in."""
        if not origin or origin in self.confirmations or self.confirmed() >= self.k:
            return False
        self.confirmations.add(origin)
        return True

    def deadline(self) -> float:
        return self.start + timing.suspicion_timeout(self.lo, self.hi, self.k, self.confirmed())

    def wake_at(self) -> float:
        """When this member next acts on the suspicion: the deadline, or once before it, at
        the minimum timeout, an early look for a member that only heard the rumour (see the
        module doc)."""
        early = self.start + self.lo
        if not self.looked_early and not self.probed_silent and early < self.deadline():
            return early
        return self.deadline()

    def wants_last_look(self) -> bool:
        """At the deadline: does this member look at the suspect itself before declaring it
        dead? Only when its own probes never failed and it has not looked already."""
        return not self.checking and not self.probed_silent


def last_look_deadline(now: float, probe_interval: float, awareness: int) -> float:
    """When a last look that starts now gives up waiting for the suspect's answer."""
    return now + LAST_LOOK_PROBE_INTERVALS * timing.scaled(probe_interval, awareness)


def buddy(name: str, incarnation: int, state: State, origin: str) -> list[Update]:
    """Lifeguard's buddy system: the claim a ping to a suspect carries first, so that it hears
    it is suspected and refutes at once; nothing for a member that is not suspected."""
    if state is not State.SUSPECT:
        return []
    return [Update(name, incarnation, State.SUSPECT, origin)]

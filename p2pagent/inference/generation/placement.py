"""Where a generation runs: on the node a client called, or on a peer with room, decided
before the sequence starts and never changed once a token was sent.

Pure: no asyncio, no gRPC; the caller passes what it learnt (this node's load, the answers
of the peers it asked) and an injected ``random.Random``. The driver (``placed.py``) asks,
calls and relays.

The rules, in the order they apply:

1. A version that is not a published one (a local folder of ``generation.folders``) runs
   here: a peer's folder of the same name may hold other weights. Published versions are
   pinned by manifest id, so any node runs exactly the same model.
2. When this node has the version loaded and room for the sequence now (nothing queued,
   a running slot and KV room free), it runs here: no peer is asked.
3. Otherwise it asks ``probes`` peers picked at random among those that take relayed
   generations (power of two choices with the default of 2: no node gathers every peer's
   load, yet the less loaded of two random peers keeps queues short) for their load of
   that version, and tries the nodes in this order: those with room first, among them
   those that hold the version loaded (no pull, no load), then the fewest waiting and the
   smallest share of their slots busy; this node wins a tie. This node is always tried
   last even without room (its queue takes the sequence): a peer without room is never
   tried, since it would refuse.
4. A peer that refuses (no room any more, the version unknown there) or fails before the
   sequence's first message was passed on is skipped, and the next one is tried. Once a
   message was passed on, a failure ends the stream with UNAVAILABLE: running it again
   elsewhere would send the client tokens twice.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from p2pagent.membership.view import MemberView

#: This node, in an attempt order.
HERE = ""

#: Member tag a node sets (to ``off``) when it takes no generations from peers
#: (``generation.accept_relayed = false``); absent means it takes them.
TAG = "generation"
TAG_OFF = "off"

#: Error codes after which the sequence is tried on the next node, provided nothing was
#: passed on yet: the peer had no room or no longer has the version, was unreachable, is
#: shutting down, or does not know the call (an older node). Anything else (a bad request,
#: a model that raises) would fail the same way anywhere and goes to the client.
RETRY_ELSEWHERE = frozenset(
    {
        "RESOURCE_EXHAUSTED",
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "CANCELLED",
        "NOT_FOUND",
        "FAILED_PRECONDITION",
        "UNIMPLEMENTED",
        "PERMISSION_DENIED",
    }
)


@dataclass(frozen=True)
class Load:
    """One node's generation load for one model version, as it reported it (or, for this
    node, as its engine says)."""

    node: str
    #: The version's engine is loaded there (no pull, no load before the first token).
    loaded: bool
    #: A sequence submitted now would be admitted at the next step.
    room: bool
    running: int = 0
    waiting: int = 0
    max_running: int = 1
    #: Share of the KV budget the running set reserves (0-1).
    reserved_fraction: float = 0.0

    @property
    def busy_fraction(self) -> float:
        return self.running / max(1, self.max_running)


def candidates(peers: Iterable[MemberView]) -> list[str]:
    """Peers that may be asked: reachable, and not opted out by their tag."""
    return [m.name for m in peers if m.reachable and m.tags.get(TAG) != TAG_OFF]


def sample(peers: Sequence[str], probes: int, rng: random.Random) -> list[str]:
    """``probes`` distinct peers picked at random (all of them when there are fewer)."""
    if probes >= len(peers):
        picked = list(peers)
        rng.shuffle(picked)
        return picked
    return rng.sample(list(peers), probes)


def runs_here_at_once(here: Load) -> bool:
    """Rule 2: no peer is asked."""
    return here.loaded and here.room


def attempt_order(here: Load, answers: Iterable[Load]) -> list[str]:
    """Rule 3: the nodes to try, best first; ``HERE`` is always in it, last when it has no
    room. Answers without room are left out (the peer would refuse)."""
    scored = [(_score(here, is_here=True), HERE)]
    scored += [(_score(a, is_here=False), a.node) for a in answers if a.room and a.node != HERE]
    scored.sort()
    return [node for _, node in scored]


def _score(load: Load, *, is_here: bool) -> tuple[bool, bool, int, float, float, bool]:
    # Sorted ascending: False before True, so each flag says what makes a node worse.
    return (
        not load.room,
        not load.loaded,
        load.waiting,
        load.busy_fraction,
        load.reserved_fraction,
        not is_here,
    )


@dataclass(frozen=True)
class Failure:
    """What becomes of a sequence whose node failed: ``retry`` on the next node, or end the
    client's stream with ``code`` (a status name) and ``message``."""

    retry: bool
    code: str = ""
    message: str = ""


def after_failure(node: str, code: str, detail: str, passed_on: int) -> Failure:
    """Rule 4. ``code``/``detail``: the failed call's status; ``passed_on``: messages of
    this sequence already sent to the client."""
    if code not in RETRY_ELSEWHERE:  # the request's or the model's fault: same anywhere
        return Failure(retry=False, code=code, message=detail)
    if passed_on == 0:
        return Failure(retry=True)
    return Failure(
        retry=False,
        code="UNAVAILABLE",
        message=(
            f"node {node}, which was running this generation, failed after {passed_on} "
            f"messages were sent ({code}: {detail}); a stream is never resumed on another "
            "node (its tokens would repeat): send the request again"
        ),
    )

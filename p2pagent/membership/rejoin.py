"""Finding the cluster again: the join retry while alone, and the re-joins that heal partitions.

Both exist so that no operator has to restart anything for a mesh to form or to become whole:

* Join retry: a member that knows no peer at all retries its join to the seeds after
  ``JOIN_RETRY_FIRST_S``, then on a doubling delay up to the re-join interval. Seeds started
  together are often not listening at the first attempt; waiting for the first re-join kept
  16 daemons started at once apart for ~5 s.
* Re-join: every re-join interval, with probability (dead members / alive members) as in
  Serf, push-pull with a random dead member, and with probability 1 / alive members with a
  seed that is not an alive member. The two sides of a healed partition find each other and
  everyone wrongly declared dead refutes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from p2pagent.membership.members import MemberTable

#: First delay before the join is tried again while no peer is known (then doubled, capped at
#: the re-join interval).
JOIN_RETRY_FIRST_S = 0.1


class JoinRetry:
    """When to try the seeds again while no peer is known; disarmed once one is."""

    def __init__(self) -> None:
        self.retries = 0
        self.next_at = math.inf  # armed by a join

    def arm(self, now: float) -> None:
        self.retries = 0
        self.next_at = now + JOIN_RETRY_FIRST_S

    def disarm(self) -> None:
        self.next_at = math.inf

    def again(self, now: float, max_delay: float) -> None:
        """Schedules the next attempt after one made now."""
        self.retries += 1
        self.next_at = now + min(max_delay, JOIN_RETRY_FIRST_S * 2**self.retries)


def rejoin_targets(
    rng: random.Random, table: MemberTable, seeds: Sequence[str]
) -> list[tuple[str, str]]:
    """The (address, name) pairs to push-pull with this re-join round; name is "" for a seed
    that is not a known member."""
    targets: list[tuple[str, str]] = []
    alive = table.alive_count()
    if table.dead and rng.random() < len(table.dead) / alive:
        m = table[rng.choice(list(table.dead))]
        targets.append((m.address, m.name))
    if seeds and rng.random() < 1 / alive:
        known = table.reachable_addresses()
        missing = [s for s in seeds if s not in known]
        if missing:
            targets.append((rng.choice(missing), ""))
    return targets

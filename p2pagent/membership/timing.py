"""The formulas behind SWIM's and Lifeguard's timeouts, as small named functions.

Lifeguard (Dadgar et al., 2018) makes two changes that stop overloaded members from flapping:

* Local health awareness: a member whose own probes go unanswered, or who learns it is being
  suspected, assumes the problem may be itself and scales its probe interval and timeout by
  ``1 + awareness`` (0 <= awareness <= ``awareness_max``).
* Suspicion timeouts start at ``max`` and fall towards ``min`` as independent members confirm
  the suspicion: ``max - (max - min) * log(c + 1) / log(k + 1)`` after ``c`` confirmations,
  where ``k`` confirmations are expected.
"""

from __future__ import annotations

import math


def suspicion_min(mult: int, members: int, probe_interval: float) -> float:
    """memberlist's minimum suspicion timeout: ``mult * max(1, log10(N)) * probe_interval``."""
    return mult * max(1.0, math.log10(max(members, 1))) * probe_interval


def expected_confirmations(mult: int, members: int) -> int:
    """Independent suspicions worth waiting for: ``mult - 2``, or none in a tiny cluster."""
    k = mult - 2
    return 0 if members - 2 < k else max(k, 0)


def suspicion_timeout(lo: float, hi: float, k: int, confirmations: int) -> float:
    if k < 1:
        return lo
    frac = math.log(confirmations + 1) / math.log(k + 1)
    return max(lo, hi - (hi - lo) * frac)


def scaled(base: float, awareness: int) -> float:
    """A probe interval or timeout stretched by local health awareness."""
    return base * (1 + awareness)


#: Members from which the push-pull interval grows in proportion to N. Eight, the smallest
#: mesh the idle-cost targets compare against: from 16 (as before), a member of 64 sent
#: about twice the push-pull bytes a member of 8 did (the table is 8x larger, exchanged 4x
#: less often), a third of the bytes that grew with N in an idle mesh of real daemons.
PUSH_PULL_FLAT_FROM = 8


def memberlist_scale(members: int) -> int:
    """memberlist's push-pull scaling: 1 up to 32 members, then ``log2(N) - log2(32) + 1``
    (rounded up). Exchanges per member per second stay flat as the cluster grows."""
    return 1 if members <= 32 else math.ceil(math.log2(members) - math.log2(32)) + 1


def push_pull_interval(base: float, members: int) -> float:
    """The full member-table exchange interval: ``base * max(1, N / 8)``.

    memberlist stretches it by ``memberlist_scale``, which keeps exchanges per member flat
    but not their bytes: each carries the whole table, O(N), so at N = 1,000 a member would
    spend five times what it spends at N = 16 (the simulator, issue 28). Stretching in
    proportion to N past 8 keeps the bytes flat instead. Anti-entropy gets slower in big
    meshes (every 2 min at N = 64, every ~31 min at N = 1,000, and a member is asked about
    as often), which SWIM can afford: updates spread by gossip, a joiner push-pulls until
    its table stops growing (``catch_up``), and re-joins heal partitions.
    """
    return base * max(1.0, members / PUSH_PULL_FLAT_FROM)


def anti_entropy_interval(base: float, members: int) -> float:
    """State anti-entropy (a digest, O(writers) not O(N)): memberlist's scaling."""
    return base * memberlist_scale(members)

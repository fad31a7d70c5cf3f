"""Membership on the deterministic simulator against the issue's targets.

``python -m bench.membership_sim [--full]``

* spreading of a join, fanout 3, 200 ms gossip, worst of three seeds, against the rounds
  Serf's convergence model gives for 99.99% of nodes (7.7 / 9.2 / 10.8 at N = 10 / 100 /
  1000), and one update spreading over 10,000 members (dissemination layer only);
* N = 1000 with 10% loss on every link: false positives (target 0) and the time until every
  live member has declared a crashed one dead, against 3x memberlist's minimum suspicion
  timeout (4 * log10(N) * probe interval = 36 s). ``--full`` runs the 10 simulated minutes
  of the target (about 10 minutes of wall time here); the default runs 2.
* wall time of a full-membership N = 1000 run of 60 simulated seconds (target < 2 minutes).
"""

from __future__ import annotations

import argparse
import time

from bench._targets import at_most, report
from p2pagent.membership import timing
from p2pagent.sim.membership import MembershipScenario, simulate, simulate_spread

SERF = {10: 7.7, 100: 9.2, 1000: 10.8}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--full", action="store_true", help="10 simulated minutes at N = 1000")
    p.add_argument("--json", action="store_true", help="print the targets as JSON")
    args = p.parse_args()
    targets = []
    for n, bound in SERF.items():
        worst = 0.0
        for seed in (1, 2, 3):
            r = simulate(MembershipScenario(nodes=n, duration=8, crash_at=100, seed=seed))
            assert r.rounds_to_full is not None
            worst = max(worst, r.rounds_to_full)
        targets.append(at_most(f"join spreading, N={n}: rounds (worst of 3 seeds)", worst, bound))
    spread = max(simulate_spread(10_000, 3, 0.2, 0.0, seed).rounds_to_full for seed in (1, 2, 3))
    targets.append(
        at_most("one update, N=10000, dissemination only: rounds (bound extrapolated)", spread,
                12.4)
    )  # fmt: skip
    duration = 600.0 if args.full else 120.0
    started = time.perf_counter()
    r = simulate(MembershipScenario(nodes=1000, loss=0.1, duration=duration, crash_at=duration / 2))
    lossy_wall = time.perf_counter() - started
    bound = 3 * timing.suspicion_min(4, 1000, 1.0)
    targets.append(
        at_most(f"N=1000, 10% loss, {duration:.0f} s: false positives", r.false_positives, 0)
    )
    targets.append(
        at_most("same: crash detected by every live member (s)", r.detection_seconds, bound)
    )
    started = time.perf_counter()
    simulate(MembershipScenario(nodes=1000, duration=60, crash_at=30))
    wall = time.perf_counter() - started
    targets.append(at_most("N=1000 full membership, 60 simulated s, no loss: wall s", wall, 120))
    report(
        targets,
        args.json,
        lossy_messages_per_member_per_s=r.messages_per_node_per_s,
        lossy_bytes_per_member_per_s=r.bytes_per_node_per_s,
        lossy_wall_s=round(lossy_wall, 1),
    )


if __name__ == "__main__":
    main()

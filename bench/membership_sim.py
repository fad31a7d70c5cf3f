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

from p2pagent.membership import timing
from p2pagent.sim.membership import MembershipScenario, simulate, simulate_spread

SERF = {10: 7.7, 100: 9.2, 1000: 10.8}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--full", action="store_true", help="10 simulated minutes at N = 1000")
    args = p.parse_args()
    print("| scenario | measured | target | met |")
    print("|---|---:|---:|---|")
    for n, bound in SERF.items():
        worst = 0.0
        for seed in (1, 2, 3):
            r = simulate(MembershipScenario(nodes=n, duration=8, crash_at=100, seed=seed))
            assert r.rounds_to_full is not None
            worst = max(worst, r.rounds_to_full)
        print(f"| join spreading, N={n}: rounds (worst of 3 seeds) | {worst:.2f} | {bound} "
              f"| {'yes' if worst <= bound else 'no'} |")  # fmt: skip
    spread = max(simulate_spread(10_000, 3, 0.2, 0.0, seed).rounds_to_full for seed in (1, 2, 3))
    print(f"| one update, N=10000, dissemination only: rounds | {spread} | 12.4 (extrapolated) "
          f"| {'yes' if spread <= 12.4 else 'no'} |")  # fmt: skip
    duration = 600.0 if args.full else 120.0
    started = time.perf_counter()
    r = simulate(MembershipScenario(nodes=1000, loss=0.1, duration=duration, crash_at=duration / 2))
    wall = time.perf_counter() - started
    bound = 3 * timing.suspicion_min(4, 1000, 1.0)
    print(f"| N=1000, 10% loss, {duration:.0f} s: false positives | {r.false_positives} | 0 "
          f"| {'yes' if r.false_positives == 0 else 'no'} |")  # fmt: skip
    det = r.detection_seconds
    print(f"| same: crash detected by every live member (s) | {det} | {bound:.0f} "
          f"| {'yes' if det is not None and det <= bound else 'no'} |")  # fmt: skip
    print(f"| same: messages / bytes per member per s | {r.messages_per_node_per_s} / "
          f"{r.bytes_per_node_per_s} | | |")  # fmt: skip
    print(f"| same: wall time (s) | {wall:.0f} | | |")
    started = time.perf_counter()
    simulate(MembershipScenario(nodes=1000, duration=60, crash_at=30))
    wall = time.perf_counter() - started
    print(f"| N=1000 full membership, 60 simulated s, no loss: wall s | {wall:.0f} | 120 "
          f"| {'yes' if wall <= 120 else 'no'} |")  # fmt: skip


if __name__ == "__main__":
    main()

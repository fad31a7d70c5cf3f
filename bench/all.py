"""Runs every benchmark in turn: ``python -m bench.all [--small]``.

``--small`` uses sizes that finish in about seven minutes on a 2-core machine (a smoke run,
which CI makes after the tests so that no benchmark rots: the numbers in RESULTS.md come from
the full sizes, each with the command shown there). A benchmark fails the run only when it
crashes or finds a correctness fault (a lost or duplicated write or task), never for a missed
speed target: those are read from its table. Each
benchmark runs in its own process; the run goes on past a failure and exits non-zero at the
end if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

FULL: list[list[str]] = [
    ["bench.state_core"],
    ["bench.state_cluster"],
    ["bench.daemon_memory"],
    ["bench.attack_memory"],
    ["bench.membership_sim"],
    ["bench.membership_cluster"],
    ["bench.inference_offline"],
    ["bench.inference_grpc"],
    ["bench.inference_isolation"],
    ["bench.tasks_sim"],
    ["bench.tasks_daemon"],
    ["bench.tasks_waiters"],
    ["bench.tasks_cluster"],
    ["bench.models_transfer", "--mib", "512", "--rounds", "3", "--disk"],
    ["bench.models_swarm", "--mib", "256", "--rounds", "2"],
    ["bench.publish_check"],
    ["bench.encoders"],
    ["bench.streams"],
    ["bench.submit_decode"],
    ["bench.chaos", "--duration", "60"],
    ["bench.scale"],
    ["bench.training"],
    ["bench.generation"],
    ["bench.openai_door"],
    ["bench.generation_relay"],
]
SMALL: list[list[str]] = [
    ["bench.state_core"],
    ["bench.state_cluster", "--nodes", "5", "--writes", "50", "--keys", "20000",
     "--partition-nodes", "4"],
    ["bench.daemon_memory", "--small"],
    ["bench.attack_memory", "--small"],
    ["bench.membership_sim"],
    ["bench.membership_cluster", "--nodes", "6", "--partition-nodes", "4"],
    ["bench.inference_offline", "--small"],
    ["bench.inference_grpc", "--small"],
    ["bench.inference_isolation", "--small"],
    ["bench.tasks_sim", "--small"],
    ["bench.tasks_daemon", "--tasks", "50", "--concurrency", "8"],
    ["bench.tasks_daemon", "--tasks", "20", "--against", "."],  # the A/B harness, A/A
    ["bench.tasks_waiters", "--tasks", "200"],
    ["bench.tasks_cluster", "--tasks", "100", "--policies", "work_stealing", "local"],
    ["bench.models_transfer", "--mib", "32", "--rounds", "1"],
    ["bench.models_swarm", "--mib", "32", "--rounds", "1"],
    ["bench.publish_check", "--small", "--rounds", "1"],
    ["bench.encoders", "--texts", "64"],
    ["bench.streams", "--small"],
    ["bench.submit_decode"],
    ["bench.chaos", "--duration", "30"],
    ["bench.scale", "--sizes", "3,6", "--idle", "5", "--settle", "1", "--sim-sizes", "16,32",
     "--join-sim-sizes", "32"],
    ["bench.training", "--quick"],
    ["bench.generation", "--small"],
    ["bench.openai_door", "--small"],
    ["bench.generation_relay", "--small"],
]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--small", action="store_true", help="smoke sizes (minutes, not hours)")
    args = p.parse_args()
    failed = []
    for cmd in SMALL if args.small else FULL:
        print(f"\n== python -m {' '.join(cmd)}", flush=True)
        start = time.monotonic()
        rc = subprocess.run([sys.executable, "-m", *cmd], check=False).returncode
        print(f"== exit {rc} after {time.monotonic() - start:.0f}s", flush=True)
        if rc != 0:
            failed.append(cmd[0])
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

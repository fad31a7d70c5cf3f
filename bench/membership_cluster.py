"""Membership with real daemons against the issue's targets.

``python -m bench.membership_cluster [--nodes 16] [--partition-nodes 6]``

* join: every daemon lists every other as alive, seconds after the last one is ready
  (target <= 5 s);
* crash: after SIGKILL of one, seconds until every other lists it dead (target <= 10 s);
* restart: seconds from the restarted daemon being ready until every member lists it alive
  with a higher incarnation (target <= 5 s);
* partition: with network namespaces, seconds from reconnecting two halves until everyone
  lists everyone alive again (target <= 30 s).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench._targets import at_most, report
from p2pagent.testing import netns
from p2pagent.testing.cluster import Cluster

POLL_S = 0.1
LIMIT_S = 120.0


def _alive_everywhere(c: Cluster, names: list[str], subject: str | None = None) -> bool:
    for o in names:
        view = c.members(o)
        subjects = [subject] if subject else names
        if any(view.get(s, ("", 0))[0] != "alive" for s in subjects):
            return False
    return True


def _timed(c: Cluster, check: object, what: str) -> float:
    start = time.monotonic()
    c.wait_for(check, LIMIT_S, what, interval=POLL_S)  # type: ignore[arg-type]
    return time.monotonic() - start


def run(nodes: int, partition_nodes: int) -> list[tuple[str, float, float]]:
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp, Cluster(Path(tmp), nodes, use_netns=False) as c:
        names = list(c.nodes)
        c.start()
        rows.append(("join: all alive after the last start (s)", _timed(
            c, lambda: _alive_everywhere(c, names), "all alive"), 5.0))  # fmt: skip
        victim = names[len(names) // 2]
        others = [n for n in names if n != victim]
        before = c.members(names[0])[victim][1]
        c.kill(victim)
        rows.append(("crash: dead everywhere after SIGKILL (s)", _timed(
            c, lambda: c.all_see(others, victim, "dead"), "dead everywhere"), 10.0))  # fmt: skip
        c.restart(victim)

        def back() -> bool:
            return _alive_everywhere(c, names, victim) and all(
                c.members(o)[victim][1] > before for o in others
            )

        rows.append(("restart: alive everywhere, higher incarnation (s)",
                     _timed(c, back, "alive again"), 5.0))  # fmt: skip
    if netns.available() and partition_nodes >= 2:
        with (
            tempfile.TemporaryDirectory() as tmp,
            Cluster(Path(tmp), partition_nodes, use_netns=True) as c,
        ):
            names = list(c.nodes)
            c.start()
            c.wait_for(lambda: _alive_everywhere(c, names), LIMIT_S, "all alive")
            half = len(names) // 2
            left, right = names[:half], names[half:]
            c.partition(left, right)
            c.wait_for(
                lambda: c.all_see(left, right[0], "dead") and c.all_see(right, left[0], "dead"),
                LIMIT_S,
                "the halves see each other dead",
            )
            time.sleep(5)  # let both sides settle into their split view
            c.heal()
            rows.append(("partition: all alive after reconnecting (s)", _timed(
                c, lambda: _alive_everywhere(c, names), "healed"), 30.0))  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--partition-nodes", type=int, default=6)
    p.add_argument("--json", action="store_true", help="print the targets as JSON")
    args = p.parse_args()
    rows = run(args.nodes, args.partition_nodes)
    targets = [at_most(what, seconds, target) for what, seconds, target in rows]
    report(targets, args.json, nodes=args.nodes)


if __name__ == "__main__":
    main()

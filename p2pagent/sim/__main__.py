"""``python -m p2pagent.sim <scenario> ...``: runs one simulated scenario.

Scenarios: ``membership`` (SWIM + Lifeguard), ``tasks`` (placement and work stealing),
``state`` (CRDT replicas), ``training`` (parameter averaging), ``training-rejoin`` (a member
restarted mid-run), each with its own ``--help``.
"""

from __future__ import annotations

import importlib
import sys

SCENARIOS = {
    "membership": "p2pagent.sim.membership",
    "tasks": "p2pagent.sim.tasks",
    "state": "p2pagent.sim.state",
    "training": "p2pagent.sim.training",
    "training-rejoin": "p2pagent.sim.training_rejoin",
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in SCENARIOS:
        print(f"usage: python -m p2pagent.sim {{{','.join(SCENARIOS)}}} [options]", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(SCENARIOS[args[0]])
    except ModuleNotFoundError:
        print(f"the {args[0]} scenario is not available in this build", file=sys.stderr)
        return 2
    code: int = module.main(args[1:])
    return code


if __name__ == "__main__":
    sys.exit(main())

"""``p2pagentctl``: talks to any node of a mesh over mutual TLS.

Every command prints a readable table by default and JSON with ``--json``. Failures are one
line on stderr and a non-zero exit status: 1 for a failed operation, 2 for bad usage or
configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from p2pagent import __version__
from p2pagent.cli import (
    certs_cmd,
    cluster_cmd,
    infer_cmd,
    models_cmd,
    state_cmd,
    tasks_cmd,
    top_cmd,
)
from p2pagent.errors import ConfigError, InvalidArgument, P2PAgentError, Unavailable

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
MODULES = (certs_cmd, cluster_cmd, top_cmd, state_cmd, infer_cmd, models_cmd, tasks_cmd)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="p2pagentctl", description="Talk to a p2pagent mesh.")
    p.add_argument("--version", action="version", version=f"p2pagentctl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in MODULES:
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return asyncio.run(handler(args))
    except (ConfigError, InvalidArgument) as e:
        print(f"p2pagentctl: error: {e}", file=sys.stderr)
        return 2
    except Unavailable as e:
        target = getattr(args, "target", "")
        print(f"p2pagentctl: error: cannot reach {target}: {e}", file=sys.stderr)
        return 1
    except P2PAgentError as e:
        print(f"p2pagentctl: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

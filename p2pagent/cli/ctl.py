"""``p2pagentctl``: talks to any node of a mesh over mutual TLS.

Every command prints a readable table by default and JSON with ``--json``. Failures are one
line on stderr and a non-zero exit status: 1 for a failed operation, 2 for bad usage or
configuration, 130 when interrupted; gRPC's own log lines are kept off the terminal. Even an
unexpected error is one line (with ``P2PAGENT_DEBUG=1`` it shows its traceback), and a closed
pipe (``| head``) ends quietly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import p2pagent.cli.grpc_quiet  # noqa: F401  (first: before anything loads grpc)
from p2pagent import __version__
from p2pagent.cli import (
    certs_cmd,
    cluster_cmd,
    completion_cmd,
    generate_cmd,
    infer_cmd,
    models_cmd,
    state_cmd,
    tasks_cmd,
    text_cmd,
    top_cmd,
    train_cmd,
)
from p2pagent.cli.args import OneLineErrorParser
from p2pagent.errors import ConfigError, InvalidArgument, P2PAgentError

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
MODULES = (
    certs_cmd, cluster_cmd, top_cmd, state_cmd, infer_cmd, models_cmd, tasks_cmd, completion_cmd,
    train_cmd, generate_cmd, text_cmd,
)  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="p2pagentctl", description="Talk to a p2pagent mesh.")
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
    except P2PAgentError as e:
        print(f"p2pagentctl: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`p2pagentctl top --json | head`): not an error worth a word.
        # Point stdout at /dev/null so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        print(f"p2pagentctl: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except Exception as e:
        if os.environ.get("P2PAGENT_DEBUG"):
            raise
        print(
            f"p2pagentctl: error: unexpected {type(e).__name__}: {e} "
            "(rerun with P2PAGENT_DEBUG=1 for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())

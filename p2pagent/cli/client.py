"""Connecting p2pagentctl to a mesh: targets, certificates, and the Python client.

Every command talks through ``p2pagent.client.Client``, so the CLI and Python programs fail
over and report errors the same way. ``--target`` may name several nodes (``a,b:7401``): a
call goes to the first that can be reached and moves on while nodes cannot be; a node named
without a port is dialled on 7400, the daemon's default. Certificates come from ``--certs``
(or ``--ca``/``--cert``/``--key``), else from ``P2PAGENT_CERTS`` or ``P2PAGENT_CA``,
``P2PAGENT_CERT`` and ``P2PAGENT_KEY``: the variables a node's own environment sets (a pod),
so ``kubectl exec POD -- p2pagentctl status`` works there without flags.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from p2pagent.cli.args import seconds
from p2pagent.client import Client
from p2pagent.errors import ConfigError
from p2pagent.identity import material as tls

DEFAULT_PORT = 7400
DEFAULT_TARGET = f"127.0.0.1:{DEFAULT_PORT}"


def add_connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target",
        default=os.environ.get("P2PAGENT_TARGET", DEFAULT_TARGET),
        metavar="HOST[:PORT][,...]",
        help="node to talk to, or several (the first that can be reached); port "
        f"{DEFAULT_PORT} when none is given (env P2PAGENT_TARGET; default %(default)s)",
    )
    p.add_argument(
        "--certs",
        default=os.environ.get("P2PAGENT_CERTS"),
        metavar="DIR",
        help="certificate directory (env P2PAGENT_CERTS)",
    )
    p.add_argument(
        "--identity",
        default=os.environ.get("P2PAGENT_IDENTITY", "client"),
        metavar="NAME",
        help="certificate name in --certs to present (env P2PAGENT_IDENTITY; default "
        "%(default)s). Its role decides what you may do: models push/rm need a publisher "
        "certificate, revoke an admin one",
    )
    for flag, what in (("ca", "CA certificate"), ("cert", "certificate"), ("key", "key")):
        env = f"P2PAGENT_{flag.upper()}"
        p.add_argument(
            f"--{flag}",
            default=os.environ.get(env),
            metavar="FILE",
            help=f"{what} file (env {env}; overrides --certs)",
        )
    p.add_argument(
        "--timeout", type=seconds(zero=False), default=10.0, metavar="S", help="per-call deadline"
    )


def material_of(args: argparse.Namespace) -> tls.TLSMaterial:
    if not args.certs and not (args.ca and args.cert and args.key):
        raise ConfigError(
            "no certificates: pass --certs DIR (or --ca, --cert and --key), or set "
            "P2PAGENT_CERTS (or P2PAGENT_CA, P2PAGENT_CERT and P2PAGENT_KEY)"
        )
    base = tls.TLSPaths.in_dir(Path(args.certs), args.identity) if args.certs else None
    paths = tls.TLSPaths(
        Path(args.ca) if args.ca else base.ca,  # type: ignore[union-attr]
        Path(args.cert) if args.cert else base.cert,  # type: ignore[union-attr]
        Path(args.key) if args.key else base.key,  # type: ignore[union-attr]
    )
    return tls.load(paths)


def with_port(target: str) -> str:
    """``target`` with the default port added when it names none: ``host``, ``1.2.3.4``,
    ``[::1]`` and a bare IPv6 address ``::1`` get ``:7400``."""
    if target.startswith("["):
        return target if "]:" in target else f"{target}:{DEFAULT_PORT}"
    if target.count(":") > 1:  # a bare IPv6 address
        return f"[{target}]:{DEFAULT_PORT}"
    return target if ":" in target else f"{target}:{DEFAULT_PORT}"


def targets_of(args: argparse.Namespace) -> list[str]:
    targets = [with_port(t.strip()) for t in str(args.target).split(",") if t.strip()]
    if not targets:
        raise ConfigError("--target is empty: name a node as HOST[:PORT], or several with commas")
    return targets


def mesh(args: argparse.Namespace, follow_s: float = 600.0) -> Client:
    """The Python client over ``--target``'s nodes, with ``--timeout`` per call."""
    return Client(targets_of(args), material_of(args), timeout_s=args.timeout, follow_s=follow_s)

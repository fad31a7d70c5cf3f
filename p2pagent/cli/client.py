"""Connecting p2pagentctl to a node: target, certificates, and errors as one clear line."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import grpc

from p2pagent._proto import agent_pb2_grpc
from p2pagent.cli.args import seconds
from p2pagent.errors import ConfigError
from p2pagent.identity import material as tls
from p2pagent.transport.channels import secure_channel

DEFAULT_TARGET = "127.0.0.1:7400"


def add_connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target",
        default=os.environ.get("P2PAGENT_TARGET", DEFAULT_TARGET),
        metavar="HOST:PORT",
        help="node to talk to (env P2PAGENT_TARGET; default %(default)s)",
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
        help="certificate name in --certs to present (default %(default)s)",
    )
    p.add_argument("--ca", metavar="FILE", help="CA certificate (overrides --certs)")
    p.add_argument("--cert", metavar="FILE", help="client certificate (overrides --certs)")
    p.add_argument("--key", metavar="FILE", help="client key (overrides --certs)")
    p.add_argument(
        "--timeout", type=seconds(zero=False), default=10.0, metavar="S", help="per-call deadline"
    )


def material_of(args: argparse.Namespace) -> tls.TLSMaterial:
    if not args.certs and not (args.ca and args.cert and args.key):
        raise ConfigError("no certificates: pass --certs DIR (or --ca, --cert and --key)")
    base = tls.TLSPaths.in_dir(Path(args.certs), args.identity) if args.certs else None
    paths = tls.TLSPaths(
        Path(args.ca) if args.ca else base.ca,  # type: ignore[union-attr]
        Path(args.cert) if args.cert else base.cert,  # type: ignore[union-attr]
        Path(args.key) if args.key else base.key,  # type: ignore[union-attr]
    )
    return tls.load(paths)


def channel(args: argparse.Namespace) -> grpc.aio.Channel:
    return secure_channel(args.target, material_of(args))


def agent(ch: grpc.aio.Channel) -> agent_pb2_grpc.AgentAsyncStub:
    return agent_pb2_grpc.AgentStub(ch)

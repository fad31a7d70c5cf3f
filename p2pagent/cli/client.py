"""Connecting p2pagentctl to a node: target, certificates, and errors as one clear line.

``--target`` may name several nodes (``a:7400,b:7400``): a command talks to the first one
that accepts a connection, so a node that is down is passed over, as the mesh passes over it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from p2pagent._proto import agent_pb2_grpc
from p2pagent.cli.args import seconds
from p2pagent.errors import ConfigError, Unavailable
from p2pagent.identity import material as tls
from p2pagent.transport.channels import secure_channel

DEFAULT_TARGET = "127.0.0.1:7400"


def add_connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target",
        default=os.environ.get("P2PAGENT_TARGET", DEFAULT_TARGET),
        metavar="HOST:PORT[,...]",
        help="node to talk to, or several: the first that answers (env P2PAGENT_TARGET; "
        "default %(default)s)",
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


def targets_of(args: argparse.Namespace) -> list[str]:
    targets = [t.strip() for t in str(args.target).split(",") if t.strip()]
    if not targets:
        raise ConfigError("--target is empty: name a node as HOST:PORT, or several with commas")
    return targets


@contextlib.asynccontextmanager
async def channel(args: argparse.Namespace) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to ``--target``, or to the first of its nodes that accepts a connection
    within ``--timeout`` (``args.target`` then names that node, for messages)."""
    targets, material = targets_of(args), material_of(args)
    if len(targets) == 1:
        async with secure_channel(targets[0], material) as ch:
            yield ch
        return
    failed = []
    for target in targets:
        ch = secure_channel(target, material)
        try:
            async with asyncio.timeout(args.timeout):
                connected = await _connects(ch)
        except TimeoutError:
            connected = False
        if not connected:
            await ch.close()
            failed.append(target)
            continue
        args.target = target
        async with ch:
            yield ch
        return
    raise Unavailable(f"none of {', '.join(failed)} accepted a connection")


async def _connects(ch: grpc.aio.Channel) -> bool:
    """Whether ``ch`` gets connected; False as soon as a first attempt fails (refused, TLS
    handshake failed), rather than after gRPC's retries."""
    state = ch.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            return False
        await ch.wait_for_state_change(state)
        state = ch.get_state(try_to_connect=True)
    return True


def agent(ch: grpc.aio.Channel) -> agent_pb2_grpc.AgentAsyncStub:
    return agent_pb2_grpc.AgentStub(ch)

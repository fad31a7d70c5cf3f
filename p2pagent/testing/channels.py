"""Channels to a test daemon under one identity of a test certificate folder.

A folder made by ``p2pagentctl certs`` (or the tests' fixtures) holds ``ca.crt`` and a
``<who>.key`` / ``<who>.crt`` pair per identity (``client``, ``admin``, ``publisher``, a
node's name); these open a mutually authenticated channel to a daemon as one of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from p2pagent._proto import agent_pb2_grpc
from p2pagent.transport.channels import channel_options

#: The tests' cluster name (the certificates' SPIFFE trust domain).
CLUSTER = "test"
_MIB = 1 << 20


def identity_credentials(certs_dir: Path, who: str = "client") -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        (certs_dir / "ca.crt").read_bytes(),
        (certs_dir / f"{who}.key").read_bytes(),
        (certs_dir / f"{who}.crt").read_bytes(),
    )


def _options(
    max_mib: int, own_subchannel: bool, extra: Sequence[tuple[str, int | str]]
) -> list[tuple[str, int | str]]:
    opts = channel_options(CLUSTER, max_mib * _MIB)
    if own_subchannel:
        # Not a subchannel shared with other channels to the same address, so per-connection
        # limits (and closing it) are seen by this channel alone.
        opts.append(("grpc.use_local_subchannel_pool", 1))
    return [*opts, *extra]


def channel(
    address: str,
    certs_dir: Path,
    who: str = "client",
    *,
    max_mib: int = 64,
    own_subchannel: bool = False,
    extra: Sequence[tuple[str, int | str]] = (),
) -> grpc.Channel:
    """A blocking channel to ``address`` as identity ``who``."""
    creds = identity_credentials(certs_dir, who)
    return grpc.secure_channel(address, creds, options=_options(max_mib, own_subchannel, extra))


def aio_channel(
    address: str,
    certs_dir: Path,
    who: str = "client",
    *,
    max_mib: int = 64,
    own_subchannel: bool = False,
    extra: Sequence[tuple[str, int | str]] = (),
) -> grpc.aio.Channel:
    """An asyncio channel to ``address`` as identity ``who`` (belongs to the running loop)."""
    creds = identity_credentials(certs_dir, who)
    opts = _options(max_mib, own_subchannel, extra)
    return grpc.aio.secure_channel(address, creds, options=opts)


def agent_stub(
    address: str, certs_dir: Path, who: str = "client"
) -> tuple[grpc.aio.Channel, agent_pb2_grpc.AgentServiceStub]:
    """An asyncio channel and the Agent service on it; the caller closes the channel."""
    ch = aio_channel(address, certs_dir, who)
    return ch, agent_pb2_grpc.AgentServiceStub(ch)

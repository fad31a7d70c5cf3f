"""Cutting one client's TCP connection from inside the server, by its gRPC peer string.

grpc.aio gives a server handler no way to reset its call: a status sent while a write is
parked (the client stopped reading, so HTTP/2 flow control holds the data) waits behind that
data, and a cancelled handler leaves the call open with no status at all. A connection is
authenticated by one certificate (mutual TLS), so every call on it belongs to the caller
whose streams are being ended: shutting the socket down makes grpc fail every call on it at
once, which frees the parked stream. ``transport.streams`` does this, after a short grace,
for a stream that a revocation or an expired certificate ended while it was parked.

Linux only (``/proc/net/tcp{,6}`` and ``/proc/self/fd``); elsewhere, or when the socket is not
found, nothing is cut and the stream ends when its client reads again.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket

log = logging.getLogger(__name__)


def parse_peer(peer: str) -> tuple[str, int] | None:
    """(address, port) of a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``)."""
    kind, _, rest = peer.partition(":")
    host, _, port = rest.rpartition(":")
    if kind not in ("ipv4", "ipv6") or not port.isdigit():
        return None
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None
    return str(address), int(port)


def _proc_address(hex_address: str) -> tuple[str, int]:
    """An address of /proc/net/tcp{,6} (host-order 32-bit words in hex, then the port)."""
    host, port = hex_address.split(":")
    words = bytes.fromhex(host)
    raw = b"".join(words[i : i + 4][::-1] for i in range(0, len(words), 4))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), int(port, 16)


def socket_inodes(remote: tuple[str, int], tables: dict[str, str]) -> set[str]:
    """Inodes of the sockets connected to ``remote`` in /proc/net/tcp-style ``tables``."""
    wanted = (str(ipaddress.ip_address(remote[0])), remote[1])
    found: set[str] = set()
    for text in tables.values():
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 10:
                continue
            try:
                if _proc_address(fields[2]) == wanted:
                    found.add(fields[9])
            except ValueError:
                continue
    return found


def cut(peer: str) -> bool:
    """Shuts down this process's TCP connection to ``peer``; True when one was found."""
    remote = parse_peer(peer)
    if remote is None:
        return False
    tables: dict[str, str] = {}
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/net/{name}") as f:
                tables[name] = f.read()
        except OSError:
            continue
    inodes = {f"socket:[{i}]" for i in socket_inodes(remote, tables) if i != "0"}
    if not inodes:
        return False
    done = False
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") not in inodes:
                continue
            # A duplicate, so that closing it leaves grpc's own descriptor alone; shutdown
            # acts on the connection both share.
            sock = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        try:
            sock.shutdown(socket.SHUT_RDWR)
            done = True
        except OSError as e:
            log.debug("could not shut down the connection to %s: %s", peer, e)
        finally:
            sock.close()
    return done

"""Certificate rotation for a running node: on SIGHUP, and when the files change on disk.

A reload re-reads the files (refusing ones that name another identity or do not belong
together, and keeping the old ones then), and retires every outbound channel: an open channel
would keep presenting the old certificate each time it reconnects until that one expires.
Retired channels are closed after a grace period so calls in flight can finish.

Renewers that rewrite the files in place (cert-manager's csi-driver, a cron job running
``p2pagentctl certs issue --force``) need no signal: the files' identity (inode, size, mtime)
is checked every ``cert_check_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from p2pagent.errors import P2PAgentError
from p2pagent.identity.material import TLSPaths

if TYPE_CHECKING:
    import grpc

    from p2pagent.node import Node

log = logging.getLogger("p2pagentd")

#: Seconds a retired channel's in-flight calls get before it is closed.
RETIRE_GRACE_S = 30.0

FileStamp = tuple[int, int, int] | None


def stamps(paths: TLSPaths) -> tuple[FileStamp, ...]:
    """What identifies each file's current contents; ``None`` for a missing file."""
    out: list[FileStamp] = []
    for path in (paths.ca, paths.cert, paths.key):
        try:
            st = os.stat(path)  # follows symlinks: Kubernetes volumes swap a ..data link
        except OSError:
            out.append(None)
            continue
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class CertificateReloader:
    def __init__(self, node: Node) -> None:
        self._node = node
        self._closing: set[asyncio.Task[None]] = set()

    def reload(self) -> bool:
        """Reloads now (call from the event loop). False, with a log line, when refused."""
        try:
            self._node.reload_certificates()
        except P2PAgentError as e:
            log.error("certificate reload failed, keeping the old ones: %s", e)
            return False
        retired = self._node.channels.retire_all()
        if retired:
            task = asyncio.get_running_loop().create_task(_close(retired, RETIRE_GRACE_S))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return True

    async def watch(self, interval: float, seen: tuple[FileStamp, ...]) -> None:
        """Reloads whenever the files change from ``seen``; runs until cancelled.

        ``seen`` must be taken before the node first read the files: a change made while the
        node was starting is then caught too (at worst it reloads files it already has).
        """
        paths = self._node.config.tls_paths()
        while True:
            await asyncio.sleep(interval)
            now = stamps(paths)
            if now != seen:
                seen = now
                log.info("certificate files changed on disk; reloading")
                self.reload()

    async def close(self) -> None:
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)


async def _close(channels: list[grpc.aio.Channel], grace: float) -> None:
    await asyncio.gather(*(ch.close(grace) for ch in channels), return_exceptions=True)

"""Partial holders: nodes that are pulling a version serve the chunks they already have.

Without this, N pullers of one publisher would each fetch the whole model from it (N times
its upload). Instead each pulling node advertises the chunks it holds so far, as a bitmap
(``bitmap``) in the registry under ``<name>/<id>/partial/<node>`` (``registry``), rewritten
as chunks arrive (at most one write in flight; the newest holdings win) and deleted once the
node is a complete holder. Pullers read those keys alongside the complete holders, and the
planner's rarest-first order (``transfer``) makes them ask the publisher for the chunks no
one else has and each other for the rest (BitTorrent's pieces, Kraken's and Dragonfly's
flat fan-out).

A pull advertises at once, even before its first chunk, so fellows divide the publisher's
chunks among them from the start. Writes are not durable: after a crash the node's resumed
pull advertises again, a node not pulling a version withdraws what it left advertised
(``forget_stale``), and readers skip nodes that are not alive and bitmaps that do not decode.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from p2pagent.errors import P2PAgentError, RemoteProtocolError
from p2pagent.models import registry
from p2pagent.models.bitmap import decode_bitmap, encode_bitmap
from p2pagent.models.manifest import Manifest
from p2pagent.models.puller import Holding
from p2pagent.models.registry import NS

if TYPE_CHECKING:
    from p2pagent.membership.view import PeerDirectory
    from p2pagent.state.driver import StateDriver

log = logging.getLogger(__name__)

#: Most partial holders read for one version (registry scan page).
MAX_PARTIAL_HOLDERS = 10_000


class PartialHoldings:
    """This node's advertised partial holdings, and everyone's as pullers need them."""

    def __init__(self, name: str, state: StateDriver, members: PeerDirectory) -> None:
        self.name = name
        self._state = state
        self._members = members
        #: Versions advertised here -> the write in flight (None when idle).
        self._writing: dict[str, asyncio.Task[None] | None] = {}
        #: Newest holdings not written yet, per version.
        self._next: dict[str, frozenset[int]] = {}

    def holdings(self, m: Manifest, complete: dict[str, str]) -> dict[str, Holding]:
        """``complete`` (live complete holders: name -> address) plus live partial holders."""
        mid = m.manifest_id
        out = {node: Holding(address) for node, address in complete.items()}
        page = self._state.scan(NS, registry.partial_prefix(m.name, mid), "", MAX_PARTIAL_HOLDERS)
        for key, value in page.entries:
            parsed = registry.parse_partial_key(key)
            if parsed is None or not value.found or not value.values:
                continue
            node = parsed[2]
            member = self._members.member(node)
            if node in out or node == self.name or not member or not member.reachable:
                continue
            try:
                chunks = decode_bitmap(value.values[0], m.chunk_count)
            except RemoteProtocolError as e:
                log.debug("models: ignoring %s's holdings of %s: %s", node, mid[:12], e)
                continue
            if member.address:
                # Even with no chunks yet: it is a fellow puller, with a share to fetch.
                out[node] = Holding(member.address, chunks)
        return out

    def advertise(self, m: Manifest, chunks: frozenset[int]) -> None:
        """Publishes the chunks of ``m`` held here (returns at once; one write in flight)."""
        mid = m.manifest_id
        self._next[mid] = chunks
        if self._writing.get(mid) is None:
            self._writing[mid] = asyncio.create_task(self._write(m), name=f"swarm-{mid[:12]}")

    async def _write(self, m: Manifest) -> None:
        mid = m.manifest_id
        key = registry.partial_key(m.name, mid, self.name)
        try:
            while (chunks := self._next.pop(mid, None)) is not None:
                await self._state.put(NS, key, encode_bitmap(chunks, m.chunk_count))
        except P2PAgentError as e:
            log.info("models: could not advertise partial holdings of %s: %s", mid[:12], e)
        finally:
            if mid in self._writing:
                self._writing[mid] = None

    async def withdraw(self, m: Manifest) -> None:
        """Deletes this node's partial holdings of ``m`` (complete now, or dropped)."""
        mid = m.manifest_id
        if mid not in self._writing:
            return
        task = self._writing.pop(mid)
        self._next.pop(mid, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._state.delete(NS, registry.partial_key(m.name, mid, self.name))

    async def forget_stale(self, versions: list[Manifest], pulling: set[str]) -> None:
        """Deletes this node's partial holdings of versions it is not pulling now (left by a
        pull that failed or by a previous process): fellows would wait for its share."""
        for m in versions:
            mid = m.manifest_id
            if mid in pulling or self._writing.get(mid) is not None:
                continue
            key = registry.partial_key(m.name, mid, self.name)
            if self._state.get(NS, key).found:
                self._writing.pop(mid, None)
                self._next.pop(mid, None)
                await self._state.delete(NS, key)

    async def stop(self) -> None:
        tasks = [t for t in self._writing.values() if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

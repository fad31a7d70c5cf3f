"""The asyncio side of one pull: drives a ``PullPlan`` with ``Peer.FetchChunks`` calls.

The plan (pure, ``transfer``) decides which chunks to ask of which holder; this module sends
the calls, verifies and writes every chunk as it arrives (``ChunkStore.write_chunk``, in a
worker thread: hashing and the atomic write release the GIL), and feeds the outcome back:

- a verified chunk -> ``on_chunk(ok=True)``; a chunk failing its hash (or an index not asked
  for) -> ``on_chunk(ok=False)``: the plan bans that holder for this pull and the chunk goes
  back to the pending pool, to be fetched from another holder;
- a stream that ends before delivering everything (the holder lacks chunks) -> ``on_missing``;
- a failed call (connection lost, node gone) -> ``on_holder_failed`` (retried after back-off).

Holders come from the registry and membership, re-read every ``HOLDER_REFRESH_S``: a holder
that dies is removed, one that finishes its own pull is added, and nodes still pulling the
version are used for the chunks they advertise (partial holders: the swarm). This pull's own
holdings go out through ``advertise`` at most every ``ADVERTISE_S``. The pull resumes from the
chunks already on disk (``ChunkStore.present``), so a restarted node or a re-issued
PullModel only fetches what is missing. Memory: at most ``max_inflight_chunks`` chunks are
requested at once, each written to disk as soon as it arrives.

Durability without an fsync per chunk: chunks are written unsynced (``ChunkStore.begin_pull``
left a marker that makes a restart check them), every ``sync_batch_chunks`` written chunks
are fsynced together in the background while the transfer goes on, and ``seal`` syncs the
rest before the pull returns, so the driver advertises only durable versions.

Each chunk is written at its offset in the version's one file (``version_file``), which is the
file the loader reads once the pull is sealed: nothing is assembled or hashed again after the
pull (every chunk was checked against the manifest's chunk hashes, which the manifest id
covers). Hashing runs in the I/O threads (``hashlib`` releases the GIL), on another core than
the event loop receiving the next chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import grpc

from p2pagent._proto import peer_pb2
from p2pagent.errors import P2PAgentError, Unavailable
from p2pagent.models.chunk_wire import fetch_chunks
from p2pagent.models.config import ModelsConfig
from p2pagent.models.landing import LAND_CHUNKS, Landed, Landing, Piece
from p2pagent.models.manifest import Manifest
from p2pagent.models.store import ChunkStore
from p2pagent.models.transfer import ChunkResult, PullPlan, Request
from p2pagent.transport.channels import ChannelPool

log = logging.getLogger(__name__)

#: How often the holder list is re-read from the registry during a pull, seconds.
HOLDER_REFRESH_S = 0.25
#: How often, at most, a pull advertises the chunks it holds so far, seconds (the first time
#: at its start, even with none: fellow pullers divide the work from the start).
ADVERTISE_S = 0.25


@dataclass(frozen=True)
class Holding:
    """A node to fetch from and what it has."""

    address: str
    #: Chunks it holds while pulling the version itself; None for a complete holder.
    chunks: frozenset[int] | None = None


@dataclass
class PullReport:
    manifest_id: str
    chunks: int
    #: Chunks already on disk when the pull started (a resumed pull).
    resumed: int
    fetched_bytes: int = 0
    seconds: float = 0.0
    corrupt: int = 0
    received_from: dict[str, int] = field(default_factory=dict)
    #: Bytes of chunk data that arrived from each holder: accepted, duplicate or corrupt (what
    #: this pull cost each holder's upload).
    bytes_from: dict[str, int] = field(default_factory=dict)
    banned: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        rate = self.fetched_bytes / max(self.seconds, 1e-9) / 1e6
        return (
            f"{self.chunks} chunks ({self.resumed} already on disk), "
            f"{self.fetched_bytes} bytes in {self.seconds:.2f}s ({rate:.1f} MB/s) "
            f"from {dict(sorted(self.received_from.items()))}; corrupt={self.corrupt} "
            f"banned={sorted(self.banned)} bytes_from={dict(sorted(self.bytes_from.items()))}"
        )


@dataclass
class PullCounts:
    """A node's pulls since start, for its metrics."""

    running: int = 0
    completed: int = 0
    failed: int = 0
    fetched_bytes: int = 0
    #: Chunks whose hash did not match (their holder was banned for the pull).
    corrupt_chunks: int = 0


class Puller:
    """Fetches the missing chunks of one version from its holders."""

    def __init__(
        self,
        manifest: Manifest,
        *,
        store: ChunkStore,
        io: Executor,
        channels: ChannelPool,
        holders: Callable[[], dict[str, Holding]],
        config: ModelsConfig,
        rng: random.Random | None = None,
        advertise: Callable[[frozenset[int]], None] | None = None,
        name: str = "",
    ) -> None:
        """``holders()`` returns the live holders to use now, complete or partial;
        ``advertise(chunks)`` publishes what this pull holds so far (not awaited)."""
        self.manifest = manifest
        self._store = store
        self._io = io
        self._channels = channels
        self._holders = holders
        self._cfg = config
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._error: BaseException | None = None
        self._advertise = advertise
        self._name = name
        self._addresses: dict[str, str] = {}
        #: What each holder was last said to hold (None: everything).
        self._advertised: dict[str, frozenset[int] | None] = {}
        self._fetched = 0
        self._bytes_from: dict[str, int] = {}
        #: Chunks written but not yet handed to a sync batch.
        self._to_sync: list[int] = []
        self._syncs: set[asyncio.Future[int]] = set()
        #: Holders that sent a chunk failing its hash: their calls stop reading.
        self._corrupt_from: set[str] = set()

    async def run(self) -> PullReport:
        loop = asyncio.get_running_loop()
        m = self.manifest
        mid = m.manifest_id
        start = time.monotonic()
        await loop.run_in_executor(self._io, self._store.begin_pull, m)
        have = await loop.run_in_executor(self._io, self._store.present, mid)
        report = PullReport(mid, m.chunk_count, len(have))
        if len(have) < m.chunk_count:
            log.info(
                "models: pulling %s (%s): %d of %d chunks already on disk",
                m.name, mid[:12], len(have), m.chunk_count,
            )  # fmt: skip
        plan = PullPlan(m, have, self._rng, self._cfg, name=self._name)
        # Chunk writes in the I/O pool: run() returns only once they are done, so nothing is
        # half-written behind a failed or cancelled pull.
        landing = Landing(self._store, mid, self._io, lambda batch: self._landed(plan, batch))
        calls: set[asyncio.Task[None]] = set()
        refreshed = -HOLDER_REFRESH_S
        advertised_at, advertised_count = -ADVERTISE_S, -1  # at once: fellows share from now
        stalled_since: float | None = None
        try:
            while not plan.is_complete:
                self._wake.clear()
                now = time.monotonic()
                if self._error is not None:
                    raise self._error
                if now - refreshed >= HOLDER_REFRESH_S:
                    self._refresh(plan)
                    refreshed = now
                have_count = plan.have_count
                if (
                    self._advertise is not None
                    and have_count > advertised_count
                    and now - advertised_at >= ADVERTISE_S
                ):
                    self._advertise(plan.have)
                    advertised_at, advertised_count = now, have_count
                for req in plan.next_requests(now):
                    task = asyncio.create_task(self._fetch(plan, landing, req))
                    calls.add(task)
                    task.add_done_callback(calls.discard)
                if plan.is_complete:
                    break
                if plan.is_stalled:
                    stalled_since = stalled_since if stalled_since is not None else now
                    if now - stalled_since >= self._cfg.stall_timeout_s:
                        raise self._stalled(plan)
                else:
                    stalled_since = None
                timeout = HOLDER_REFRESH_S
                deadline = plan.next_deadline()
                if deadline is not None:
                    timeout = min(timeout, max(0.0, deadline - now))
                # A timer, not wait_for's task per wake-up: this loop turns once per batch
                # of landed chunks.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
            await landing.idle()
            if self._error is not None:
                raise self._error
            self._sync_batch(force=True)
            await asyncio.gather(*self._syncs)
            await loop.run_in_executor(self._io, self._store.seal, mid)
        finally:
            for task in calls:
                task.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
            await landing.idle()
            await asyncio.gather(*self._syncs, return_exceptions=True)
            # A failed or cancelled pull keeps what landed: durable and in the index, so the
            # next pull (or the restarted node) resumes from it.
            with contextlib.suppress(P2PAgentError, OSError):
                await loop.run_in_executor(self._io, self._store.sync_chunks, mid)
        progress = plan.progress()
        report.seconds = time.monotonic() - start
        report.fetched_bytes = self._fetched
        report.corrupt = progress.corrupt
        report.received_from = dict(progress.received_from)
        report.bytes_from = dict(self._bytes_from)
        report.banned = plan.banned
        return report

    def _stalled(self, plan: PullPlan) -> Unavailable:
        m = self.manifest
        banned = plan.banned
        why = f"; given up on {banned}" if banned else ""
        missing = plan.progress().total_chunks - plan.progress().have_chunks
        return Unavailable(
            f"cannot pull model {m.name!r} ({m.manifest_id[:12]}): no live holder has the "
            f"{missing} missing chunks{why}; the chunks on disk are kept, retry once a holder "
            "is back"
        )

    def _refresh(self, plan: PullPlan) -> None:
        live = self._holders()
        for node in set(self._addresses) - set(live):
            plan.remove_holder(node)
            del self._addresses[node]
            del self._advertised[node]
        for node, holding in live.items():
            if node not in self._addresses or self._advertised[node] != holding.chunks:
                plan.add_holder(node, holding.chunks, time.monotonic())
                self._advertised[node] = holding.chunks
            self._addresses[node] = holding.address

    async def _fetch(self, plan: PullPlan, landing: Landing, req: Request) -> None:
        """One FetchChunks call. The chunks go to the I/O threads to be verified and written
        (``landing``, ``LAND_CHUNKS`` at a time) while the next ones are received; their
        outcomes reach the plan in ``_landed``."""
        owed = list(req.indices)
        node = req.node
        group: list[Piece] = []
        try:
            call = fetch_chunks(
                self._channels.get(self._addresses[node]),
                peer_pb2.FetchChunksRequest(manifest_id=self.manifest.manifest_id, indices=owed),
            )
            async for chunk in call:
                index = chunk.index
                data = chunk.data
                self._bytes_from[node] = self._bytes_from.get(node, 0) + len(data)
                if index not in owed or node in self._corrupt_from:
                    if index not in owed:  # never asked for: as bad as a corrupt chunk
                        plan.on_chunk(node, index, False, time.monotonic())
                        self._corrupt(node, index)
                    call.cancel()
                    break
                owed.remove(index)
                group.append((index, data))
                if len(group) >= LAND_CHUNKS:
                    landing.submit(node, group)
                    group = []
            else:
                if owed:
                    plan.on_missing(node, owed, time.monotonic())
        except grpc.aio.AioRpcError as e:
            if e.code() is grpc.StatusCode.NOT_FOUND:
                plan.on_missing(node, owed, time.monotonic())
            else:
                log.info("models: fetching chunks from %s failed: %s", node, e.code().name)
                plan.on_holder_failed(node, time.monotonic())
        except asyncio.CancelledError:
            group = []  # the pull is cancelled: what was received but not handed over is lost
            raise
        except Exception as e:
            log.exception("models: fetch from %s failed", node)
            self._error = e
        finally:
            # Received whole, whatever became of the call: verified and written like the rest
            # (after a failed call the plan re-queued them too; whichever lands first counts).
            landing.submit(node, group)
            self._wake.set()

    def _landed(self, plan: PullPlan, batch: list[Landed]) -> None:
        """Chunks verified and written (or found corrupt) since the last batch: tells the
        plan, counts them, hands the written ones to a sync batch."""
        now = time.monotonic()
        # The planning loop turns only when this batch lets it send a call (or changes more
        # than the holders' free slots): a turn per landed chunk was most of the pull's Python.
        wake = False
        for landed in batch:
            if landed.error is not None:
                # Our own store: disk full, version deleted meanwhile, the pool shut down.
                if self._error is None:
                    self._error = landed.error
                wake = True
                continue
            result = plan.on_chunk(landed.node, landed.index, landed.ok, now)
            if result is ChunkResult.ACCEPTED:
                self._fetched += landed.size
                self._to_sync.append(landed.index)
                wake = wake or plan.may_ask(landed.node)
            else:
                wake = True
                if result is ChunkResult.CORRUPT:
                    self._corrupt_from.add(landed.node)
                    self._corrupt(landed.node, landed.index)
        self._sync_batch()
        if wake or plan.is_complete:
            self._wake.set()

    def _sync_batch(self, force: bool = False) -> None:
        """Hands the written chunks to a background fsync once a batch is full."""
        if not self._to_sync or (len(self._to_sync) < self._cfg.sync_batch_chunks and not force):
            return
        batch, self._to_sync = self._to_sync, []
        loop = asyncio.get_running_loop()
        sync = loop.run_in_executor(
            self._io, self._store.sync_chunks, self.manifest.manifest_id, batch
        )
        self._syncs.add(sync)
        sync.add_done_callback(self._synced)

    def _synced(self, sync: asyncio.Future[int]) -> None:
        self._syncs.discard(sync)
        if not sync.cancelled() and sync.exception() is not None and self._error is None:
            self._error = sync.exception()
            self._wake.set()

    def _corrupt(self, node: str, index: int) -> None:
        log.warning(
            "models: chunk %d of %s (%s) from %s failed verification; fetching it elsewhere "
            "and not asking %s again during this pull",
            index, self.manifest.name, self.manifest.manifest_id[:12], node, node,
        )  # fmt: skip

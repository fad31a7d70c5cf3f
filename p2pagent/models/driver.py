"""The models component: chunk store on disk, registry in the replicated state, pulls, serving.

What it does, and where the decisions are made:

- **Publish** (``publish``): a client-streamed upload goes through ``PublishWriter`` (chunks
  written as they arrive, the manifest only on success, so a cut-off upload publishes
  nothing), the file's header is checked against its declared format, then the manifest and
  this node as holder go into the registry (``registry``, namespace ``_models``).
- **Serve** (``serve_chunks``, ``Peer.FetchChunks``; ``serve.ChunkServer``): chunks are read
  from disk (re-hashed when ``verify_on_read``), paced by the upload cap
  (``ratelimit.TokenBucket``), streamed in the order asked; a chunk this node lacks ends the
  stream early and the puller fetches it elsewhere.
- **Pull** (``pull``): one ``Puller`` per version at a time (concurrent requests share it),
  resuming from the chunks on disk; once complete, this node adds itself to the holders.
  While it pulls, the node advertises the chunks it has (``registry.partial_key``) and serves
  them, and fetches from other nodes still pulling (the swarm), not only from complete holders.
- **Reconcile** (every ``RECONCILE_S`` and on registry changes): advertise what is complete
  here, withdraw what is not, apply the replication policy (``replication.plan_replication``:
  pulls for versions this node is a target of, resumes of interrupted pulls, drops of
  superseded versions), make the newest complete version of each model loadable by name
  (``loadable.LoadableModels``: the assembled, verified file registered in the inference
  ``ModelCache``; pinned versions beside it), and forget versions deleted from the registry.

Test-only fault hook: with ``P2PAGENT_TEST_CORRUPT_CHUNKS=N`` in its environment a node flips
one byte of every chunk it serves whose index is a multiple of N (``1``: every chunk), so
tests can check that pullers detect corrupt chunks and fetch them elsewhere. Never set it in
production; the daemon logs a warning at start when it is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from p2pagent.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    P2PAgentError,
    Unavailable,
)
from p2pagent.inference.formats import ModelFormat, detect_format
from p2pagent.models import registry
from p2pagent.models.alloc import ChunkBuffers
from p2pagent.models.config import ModelsConfig
from p2pagent.models.loadable import LoadableModels, serving_spec, spec_of
from p2pagent.models.manifest import (
    Manifest,
    check_model_name,
    check_sha256,
    next_version,
)
from p2pagent.models.ownership import check_may_delete, check_may_publish
from p2pagent.models.publish import PublishWriter, receive_upload
from p2pagent.models.publish_check import CheckSlots, Confinement, WarmChild, check_folder_pack
from p2pagent.models.puller import Holding, PullCounts, Puller, PullReport
from p2pagent.models.ratelimit import TokenBucket
from p2pagent.models.registry import NS, Entry
from p2pagent.models.replication import VersionInfo, plan_replication, under_replicated
from p2pagent.models.serve import ChunkServer
from p2pagent.models.store import ChunkStore, ReadInto
from p2pagent.models.swarm import PartialHoldings

if TYPE_CHECKING:
    from p2pagent.identity.spiffe import Identity
    from p2pagent.inference.cache import ModelCache
    from p2pagent.inference.spec import ModelSpec
    from p2pagent.membership.view import MemberView, PeerDirectory
    from p2pagent.state.driver import StateDriver
    from p2pagent.state.values import Change
    from p2pagent.transport.channels import ChannelPool

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds between reconciliations when nothing wakes the loop earlier.
RECONCILE_S = 2.0
#: Test-only fault hook (see module docs).
CORRUPT_ENV = "P2PAGENT_TEST_CORRUPT_CHUNKS"


class ModelsDriver:
    """One node's part in model sharing; a component of the node."""

    def __init__(
        self,
        name: str,
        config: ModelsConfig,
        *,
        data_dir: Path,
        state: StateDriver,
        channels: ChannelPool,
        members: PeerDirectory,
        cache: ModelCache | None = None,
        reserved_names: Callable[[], set[str]] = set,
        rng: random.Random | None = None,
        check_confinement: Confinement | None = None,
        warm: Callable[[ModelFormat, ModelSpec], None] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        #: How the publish check's child keeps model code from the key (None: unconfined).
        self._confinement = check_confinement
        self._root = data_dir / "models"
        self._state = state
        self._channels = channels
        self._members = members
        self._reserved = reserved_names
        self._rng = rng or random.Random()
        self._io = ThreadPoolExecutor(4, thread_name_prefix="models-io")
        self._buffers = ChunkBuffers(config.tune_malloc)
        self._store: ChunkStore | None = None
        self._manifests = registry.ManifestCache()
        self._pulls: dict[str, asyncio.Task[PullReport]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._complete: set[str] = set()
        #: Versions wanted here regardless of the policy (explicitly pulled or published).
        self._pinned: set[str] = set()
        self._swarm = PartialHoldings(name, state, members)
        self._wake = asyncio.Event()
        self._checks = CheckSlots(config.check_concurrency)
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._unsubscribe_members: Callable[[], None] | None = None
        corrupt = os.environ.get(CORRUPT_ENV, "")
        self._corrupt_every = int(corrupt) if corrupt.isdigit() and int(corrupt) > 0 else 0
        self._server = ChunkServer(
            name,
            self._io,
            TokenBucket(
                config.upload_rate_bytes_per_s,
                max(config.upload_burst_bytes, config.chunk_size),
                time.monotonic(),
            ),
            corrupt_every=self._corrupt_every,
        )
        self.loadable = LoadableModels(
            name,
            cache,
            reserved_names=reserved_names,
            assemble=self.assembled,
            is_complete=lambda mid: mid in self._complete,
            versions=self.entries,
            resolve=self.resolve,
            pull=self.pull,
            warm=warm,
        )
        self.last_pull: PullReport | None = None
        self.pull_counts = PullCounts()

    @property
    def store(self) -> ChunkStore:
        if self._store is None:
            raise Unavailable("the model store is still opening; retry shortly")
        return self._store

    async def _run_io(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._buffers.fit(self.config.chunk_size)
        loop = asyncio.get_running_loop()
        self._store = store = await loop.run_in_executor(
            self._io, ChunkStore, self._root, self.config
        )
        store.on_incomplete = lambda _mid: loop.call_soon_threadsafe(self._wake.set)
        report = await loop.run_in_executor(self._io, store.gc)
        if report.files_removed:
            log.info("models: removed %d files of unknown versions at start", report.files_removed)
        for m in store.manifests():
            self._buffers.fit(m.chunk_size)  # held, so served
            if await loop.run_in_executor(self._io, store.is_complete, m.manifest_id):
                self._complete.add(m.manifest_id)
        if self._corrupt_every:
            log.warning("models: %s is set: serving corrupt chunks (tests only)", CORRUPT_ENV)
        log.info(
            "models: %d versions on disk (%d complete) in %s",
            len(store.manifests()), len(self._complete), self._root,
        )  # fmt: skip
        self._unsubscribe = self._state.subscribe(NS, "", self._on_change)
        self._unsubscribe_members = self._members.subscribe(self._on_member)
        self._task = asyncio.create_task(self._reconcile_loop(), name="models-reconcile")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._unsubscribe_members is not None:
            self._unsubscribe_members()
        await self._swarm.stop()
        tasks = [t for t in (self._task, *self._pulls.values(), *self._background) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._io.shutdown(wait=True, cancel_futures=True)

    # ---- the registry -----------------------------------------------------------------------

    def entries(self, name: str = "") -> list[Entry]:
        """Every version the registry knows (of ``name``, if given), oldest first per name."""
        prefix = f"{name}/" if name else ""
        manifests: dict[str, tuple[str, bytes]] = {}
        holders: dict[str, tuple[bytes, ...]] = {}
        after = ""
        while True:
            page = self._state.scan(NS, prefix, after, 1000)
            for key, value in page.entries:
                k = registry.parse_key(key)
                if k is None or not value.found:
                    continue
                if k.holders:
                    holders[k.manifest_id] = value.elements
                elif value.values:
                    manifests[k.manifest_id] = (k.name, value.values[0])
            if not page.next_after:
                break
            after = page.next_after
        return registry.build_entries(manifests, holders, self._manifests)

    def resolve(self, name: str, manifest_id: str = "") -> Entry:
        """The named version, or the newest one of ``name``; NotFound saying what exists."""
        check_model_name(name)
        if manifest_id:
            registry.check_manifest_id(manifest_id)
        versions = self.entries(name)
        if manifest_id:
            for e in versions:
                if e.manifest_id == manifest_id:
                    return e
            raise NotFound(
                f"model {name!r} has no version {manifest_id[:12]}; "
                f"known: {[e.manifest_id[:12] for e in versions] or 'none'}"
            )
        if not versions:
            raise NotFound(f"model {name!r} is not published; p2pagentctl models ls lists models")
        return versions[-1]

    def live_holders(self, manifest_id: str) -> dict[str, str]:
        """Live nodes other than this one holding the version complete: name -> address."""
        out: dict[str, str] = {}
        for e in self.entries_by_id([manifest_id]):
            for node in e.holders:
                member = self._members.member(node)
                if node != self.name and member and member.reachable and member.address:
                    out[node] = member.address
        return out

    def holdings(self, m: Manifest) -> dict[str, Holding]:
        """Nodes to fetch ``m`` from: live complete holders, and live nodes pulling it."""
        return self._swarm.holdings(m, self.live_holders(m.manifest_id))

    def entries_by_id(self, ids: list[str]) -> list[Entry]:
        wanted = set(ids)
        return [e for e in self.entries() if e.manifest_id in wanted]

    async def _advertise(self, m: Manifest) -> None:
        await self._state.set_add(
            NS, registry.holders_key(m.name, m.manifest_id), [self.name.encode()], durable=True
        )

    async def _withdraw(self, m: Manifest) -> None:
        await self._state.set_remove(
            NS, registry.holders_key(m.name, m.manifest_id), [self.name.encode()], durable=True
        )

    # ---- publish ----------------------------------------------------------------------------

    async def publish(
        self,
        *,
        name: str,
        format: str,
        size: int,
        chunk_size: int,
        metadata: dict[str, object],
        replicas: str,
        pieces: AsyncIterator[bytes],
        sha256: str,
        caller: Identity,
    ) -> Manifest:
        """Stores an upload and registers it as ``caller``'s. Nothing is published unless all
        of it arrived, hashes to ``sha256`` (else DataLoss) and passes ``publish_check``; a
        name another identity owns is refused (``ownership``)."""
        check_model_name(name)
        check_may_publish(caller, name, [e.manifest for e in self.entries_safe(name)])
        store = self.store
        fmt = ModelFormat.parse(format)
        if not sha256:
            raise InvalidArgument(
                "the upload header carries no sha256: the client must send the SHA-256 of the "
                "whole file (p2pagentctl models push and p2pagent.client do); upgrade it"
            )
        check_sha256(sha256)
        serving_spec(name, fmt, metadata)
        latest = max((e.manifest.version for e in self.entries_safe(name)), default=None)
        now = time.time()
        writer = PublishWriter(
            store, name=name, format=fmt, size=size, version=next_version(now, latest),
            created_unix=now, chunk_size=chunk_size, metadata=metadata, replicas=replicas,
            sha256=sha256, owner=caller.uri,
        )  # fmt: skip
        self._buffers.fit(chunk_size)  # checked by the writer; 0 is the default, fitted at start
        # The check's child starts now, and loads torch while the bytes stream in.
        try:
            warm = await self._checks.warm(fmt.value, confined=self._confinement is not None)
        except BaseException:
            writer.abort()
            raise
        try:
            manifest = await receive_upload(writer, pieces, self._io)
            mid = manifest.manifest_id
            try:
                await self._check_loadable(manifest, warm)
            except BaseException:
                await self._run_io(self._forget_local, mid)
                raise
        finally:
            if warm is not None:
                warm.close()
        await self._state.put(NS, registry.version_key(name, mid), manifest.encode(), durable=True)
        self._complete.add(mid)
        self._pinned.add(mid)
        await self._advertise(manifest)
        log.info("models: published %s (%s), %d bytes", name, mid[:12], manifest.size)
        self._wake.set()
        return manifest

    def entries_safe(self, name: str) -> list[Entry]:
        try:
            return self.entries(name)
        except Unavailable:
            return []

    async def _check_loadable(self, m: Manifest, warm: WarmChild | None = None) -> None:
        """Assembles the upload, checks the file really is its format, then that it loads
        and runs on its example inputs (``publish_check``, in a child process)."""
        spec = spec_of(m)
        assert spec is not None  # publish refuses an upload without metadata
        path = await self.assembled(m)
        detected = await asyncio.get_running_loop().run_in_executor(self._io, detect_format, path)
        if detected is not m.format:
            raise InvalidArgument(
                f"the uploaded file holds a model of format {detected.value}, not "
                f"{m.format.value}; publish it with the right --format"
            )
        if detected is ModelFormat.HF_FOLDER:
            await asyncio.get_running_loop().run_in_executor(
                self._io, check_folder_pack, path, spec.to_dict()
            )
        seconds = await self._checks.check(
            path, detected.value, spec.to_dict(), warm=warm, timeout_s=self.config.check_timeout_s,
            memory_bytes=self.config.check_memory_bytes, confinement=self._confinement,
        )  # fmt: skip
        log.info("models: %s (%s) passed its check in %.1f s", m.name, m.manifest_id[:12], seconds)

    async def assembled(self, m: Manifest) -> Path:
        """The verified file of a version held here (inference cache, ``Generate``)."""
        path = await self._run_io(self.store.assemble, m.manifest_id)
        assert isinstance(path, Path)
        return path

    # ---- serving ------------------------------------------------------------------------------

    def serve_chunks(
        self,
        manifest_id: str,
        indices: list[int],
        encode: Callable[[int, memoryview], T],
        into: ReadInto | None = None,
    ) -> AsyncIterator[tuple[int, T]]:
        """``(index, encode(index, chunk))`` of a version held here, in the order asked,
        paced by the upload cap (``serve.ChunkServer.serve``).

        The allocator already fits its chunk size: a version gets into the store only by
        ``publish``, ``_pull`` or ``start``, which fit it."""
        return self._server.serve(self.store, manifest_id, indices, encode, into)

    # ---- pulling ------------------------------------------------------------------------------

    async def pull(self, entry: Entry, *, pin: bool = True) -> Manifest:
        """Makes this node hold the version complete (pulling what is missing)."""
        m = entry.manifest
        mid = m.manifest_id
        if pin:
            self._pinned.add(mid)
        if mid not in self._complete:
            task = self._pulls.get(mid)
            if task is None:
                task = asyncio.create_task(self._pull(m), name=f"models-pull-{mid[:12]}")
                self._pulls[mid] = task
                task.add_done_callback(lambda _t: self._pulls.pop(mid, None))
            await asyncio.shield(task)
        if self.name not in entry.holders:
            await self._advertise(m)
        await self.loadable.make_loadable(m)
        return m

    async def _pull(self, m: Manifest) -> PullReport:
        mid = m.manifest_id
        self._buffers.fit(m.chunk_size)
        puller = Puller(
            m,
            store=self.store,
            io=self._io,
            channels=self._channels,
            holders=lambda: self.holdings(m),
            config=self.config,
            rng=self._rng,
            advertise=lambda chunks: self._swarm.advertise(m, chunks),
            name=self.name,
        )
        self.pull_counts.running += 1
        try:
            report = await puller.run()
        except BaseException:
            self.pull_counts.failed += 1
            raise
        finally:
            self.pull_counts.running -= 1
        self.pull_counts.fetched_bytes += report.fetched_bytes
        self.pull_counts.corrupt_chunks += report.corrupt
        complete = await self._run_io(self.store.is_complete, mid)
        if not complete:
            self.pull_counts.failed += 1
            raise FailedPrecondition(
                f"pull of {m.name!r} ({mid[:12]}) ended with chunks missing; pull it again"
            )
        self._complete.add(mid)
        self.pull_counts.completed += 1
        self.last_pull = report
        log.info("models: pulled %s (%s): %s", m.name, mid[:12], report.summary())
        await self._advertise(m)
        await self._swarm.withdraw(m)
        self._wake.set()
        return report

    # ---- delete -----------------------------------------------------------------------------

    async def delete(self, name: str, manifest_id: str = "", *, caller: Identity) -> int:
        """Deletes one version (or all of ``name``) cluster-wide; returns how many. Only
        versions ``caller`` may delete (``ownership``): else nothing is deleted."""
        if manifest_id:
            targets = [self.resolve(name, manifest_id)]
        else:
            self.resolve(name)  # NotFound when there is nothing to delete
            targets = self.entries(name)
        check_may_delete(caller, [e.manifest for e in targets])
        for e in targets:
            m = e.manifest
            await self._state.delete(NS, registry.version_key(m.name, m.manifest_id), durable=True)
            if e.holders:
                await self._state.set_remove(
                    NS,
                    registry.holders_key(m.name, m.manifest_id),
                    [h.encode() for h in e.holders],
                    durable=True,
                )
            await self._drop_local(m.manifest_id)
        return len(targets)

    def _on_change(self, change: Change) -> None:
        key = registry.parse_key(change.key)
        if key is None:
            return
        if change.deleted and not key.holders:
            self._spawn(self._drop_local(key.manifest_id))
        self._wake.set()

    async def _drop_local(self, manifest_id: str) -> None:
        pull = self._pulls.get(manifest_id)
        if pull is not None:
            pull.cancel()
        self._complete.discard(manifest_id)
        self._pinned.discard(manifest_id)
        if self.store.has_manifest(manifest_id):
            await self._swarm.withdraw(self.store.get_manifest(manifest_id))
        self.loadable.forget(manifest_id)
        if self.store.has_manifest(manifest_id):
            await self._run_io(self._forget_local, manifest_id)
            log.info("models: dropped version %s", manifest_id[:12])
        self._wake.set()

    def _forget_local(self, manifest_id: str) -> None:
        try:
            self.store.delete(manifest_id)
        except NotFound:
            pass
        self.store.gc()

    # ---- reconciliation ---------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        """Reconciles when the registry, the membership or a local pull changed; looks again
        after ``RECONCILE_S`` only while the last pass acted or failed (a pull it started may
        fail and need starting again). A settled node scans nothing until something changes."""
        while True:
            self._wake.clear()
            settled = False
            try:
                settled = await self._reconcile()
            except asyncio.CancelledError:
                raise
            except Unavailable:
                pass  # state still loading
            except Exception:
                log.exception("models: reconciliation failed; retrying")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if settled else RECONCILE_S):
                    await self._wake.wait()

    def _on_member(self, view: MemberView) -> None:
        self._wake.set()  # holders came or went: replication may need a pull or a drop

    async def _reconcile(self) -> bool:
        """One pass; True when it found nothing to do (no advertisement, pull or drop)."""
        acted = False
        entries = self.entries()
        store = self.store
        # A version whose file lost a chunk (rot found while serving) is pulled again.
        self._complete = {
            m for m in self._complete if store.has_manifest(m) and store.is_complete(m)
        }
        local = {m.manifest_id for m in store.manifests()}
        for e in entries:
            mid, m = e.manifest_id, e.manifest
            if mid in self._complete and self.name not in e.holders:
                await self._advertise(m)
                acted = True
            elif mid not in self._complete and self.name in e.holders and mid not in self._pulls:
                await self._withdraw(m)  # advertised, but not here (lost or wiped disk)
                acted = True
        await self._swarm.forget_stale([e.manifest for e in entries], set(self._pulls))
        live = [v.name for v in self._members.members() if v.reachable]
        plan = plan_replication(
            [VersionInfo.of(e.manifest, e.holders) for e in entries],
            live,
            self.name,
            self._complete,
            partial=local - self._complete,
            in_use=self._pinned | (local - self._complete),
            keep_versions=self.config.keep_versions,
        )
        by_id = {e.manifest_id: e for e in entries}
        for mid in plan.pull:
            wanted = mid in self._pinned or mid in local or under_replicated(by_id[mid], live)
            if wanted and mid not in self._pulls and self.live_holders(mid):
                self._spawn(self._background_pull(by_id[mid]))
                acted = True
            elif wanted and mid in self._pulls:
                acted = True  # pulling: if it fails, the next pass starts it again
        for mid in plan.drop:
            # Retained versions stay wherever they are; superseded ones go once the newest is
            # fully replicated (the policy checked that).
            if mid not in plan.targets and mid not in self._pinned and mid in by_id:
                await self._withdraw(by_id[mid].manifest)
                await self._drop_local(mid)
                acted = True
        newest: dict[str, Entry] = {}
        for e in entries:
            if e.manifest_id in self._complete:
                newest[e.manifest.name] = e  # entries are oldest first
        for e in newest.values():
            await self.loadable.make_loadable(e.manifest)
        return not acted

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _background_pull(self, entry: Entry) -> None:
        try:
            await self.pull(entry, pin=False)
        except P2PAgentError as e:
            log.info("models: replication pull of %s failed: %s", entry.manifest.name, e)

    async def ensure_loadable(self, name: str, version: str = "") -> str:
        """For Infer and tasks: the name the inference cache runs ``name`` (at ``version``)
        under, pulling it first when needed (``LoadableModels.ensure_loadable``)."""
        return await self.loadable.ensure_loadable(name, version)

    # ---- views --------------------------------------------------------------------------------

    def versions_held(self) -> int:
        """Versions held complete on this node."""
        return len(self._complete)

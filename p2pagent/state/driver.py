"""The asyncio glue around the replica: API writes in, sync messages out over the ``Peer``
service, batches to SQLite on a worker thread, changes to watchers.

Wire: every sync message is one ``Peer.Replicate(Envelope)`` call; the receiver streams back
its answers (an anti-entropy digest is answered with the deltas the asker lacks, each message
under ``state.max_message_bytes``). A failed call is a lost message: anti-entropy repairs it.

Durability (group commit): writes change the in-memory replica at once; one flusher task
takes every change made since its last batch and saves them in one transaction on the store
thread. A ``durable`` write waits until a batch holding it was committed with fsync; writes
arriving while a batch is being synced share the next one, so a burst of durable writes costs
a few fsyncs, not one each. Non-durable changes linger briefly to batch up.

Writes with ``acks`` wait, after the local commit, until that many peers have applied the
write's delta (and synced it to disk too when the write is durable).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from p2pagent._proto import common_pb2, peer_pb2_grpc
from p2pagent.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    RemoteProtocolError,
    Unavailable,
    UnsupportedVersion,
)
from p2pagent.logs import RateLimitedLog
from p2pagent.membership.view import LEFT, PeerDirectory
from p2pagent.state.codec import RECEIVE_SLACK_BYTES, VERSION, decode_message, encode_message
from p2pagent.state.config import StateConfig
from p2pagent.state.messages import DeltaMessage, Message
from p2pagent.state.replica import PersistBatch, Replica
from p2pagent.state.store import StateStore
from p2pagent.state.traffic import SyncTraffic
from p2pagent.state.values import Change, ReadResult, ScanPage, WriteResult
from p2pagent.transport.guard import caller_identity

if TYPE_CHECKING:
    from p2pagent.transport.channels import ChannelPool
    from p2pagent.transport.metrics import RpcMetrics

log = logging.getLogger(__name__)

#: Metadata key asking the receiver of a delta to sync it to disk before answering.
DURABLE_METADATA = "x-p2pagent-durable"
#: Reserved namespaces: written by the system, readable by anyone.
SYSTEM_PREFIX = "_"
REVOKED_NS = "_revoked"

ChangeListener = Callable[[Change], None]


class StateDriver:
    """One node's replica of the shared state; a component of the node."""

    def __init__(
        self,
        name: str,
        config: StateConfig,
        *,
        data_dir: Path,
        channels: ChannelPool,
        members: PeerDirectory,
        metrics: RpcMetrics,
        revoked: dict[str, str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.config = config.validate()
        #: Largest state message taken from a peer; a bigger one is refused undecoded.
        self.max_receive_bytes = self.config.max_message_bytes + RECEIVE_SLACK_BYTES
        self._path = data_dir / "state.db"
        self._channels = channels
        self._members = members
        self._metrics = metrics
        self._revoked = revoked
        self._rng = rng or random.Random()
        self._replica: Replica | None = None
        self._store: StateStore | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="state-store")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sends: set[asyncio.Task[bool]] = set()
        self._in_flight: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._dirty = asyncio.Event()
        self._durable_wanted = asyncio.Event()
        self._durable_waiters: list[asyncio.Future[None]] = []
        self._unsaved: PersistBatch | None = None
        self._listeners: list[tuple[str, str, ChangeListener]] = []
        self._published = 0
        self.traffic = SyncTraffic()
        self._known: set[str] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._bad = RateLimitedLog(log, 60.0)

    @property
    def replica(self) -> Replica:
        if self._replica is None:
            raise Unavailable("the replicated state is still loading; retry shortly")
        return self._replica

    @property
    def loaded(self) -> Replica | None:
        """The replica once loaded, else None (for views that must not fail)."""
        return self._replica

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        started = time.monotonic()
        self._store = await loop.run_in_executor(self._executor, StateStore, self._path)
        stored = await loop.run_in_executor(self._executor, self._store.load, self.name)
        self._replica = Replica(config=self.config, rng=self._rng, **stored.replica_args())
        # The loaded replica lives as long as the process: keep the collector off its objects.
        gc.collect()
        gc.freeze()
        self._published = self._replica.changes.last_seq
        log.info(
            "state: %d keys loaded from %s in %.2fs (origin %s)",
            self._replica.key_count,
            self._path,
            time.monotonic() - started,
            self._replica.origin,
        )
        if self._revoked is not None:
            self.subscribe(REVOKED_NS, "", self._on_revocation)
            self._load_revocations()
        self._unsubscribe = self._members.subscribe(lambda _view: self._membership_changed())
        self._membership_changed()
        self._tasks = [
            asyncio.create_task(self._run(), name="state-sync"),
            asyncio.create_task(self._flusher(), name="state-flush"),
        ]

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for send in list(self._sends):
            send.cancel()
        await asyncio.gather(*self._sends, return_exceptions=True)
        loop, store, replica = self._loop, self._store, self._replica
        if loop is not None and store is not None and replica is not None:
            try:
                batch = self._take_batch()
                await loop.run_in_executor(self._executor, store.save, batch, True)
                await loop.run_in_executor(self._executor, store.mark_clean)
            except Exception:
                log.exception("state: final save failed; the next start takes a new epoch")
            await loop.run_in_executor(self._executor, store.close)
        for waiter in self._durable_waiters:
            if not waiter.done():
                waiter.set_exception(Unavailable("the node is stopping; retry on another node"))
        self._executor.shutdown(wait=False)

    # ---- reads ------------------------------------------------------------------------------

    def get(self, ns: str, key: str) -> ReadResult:
        return self.replica.get(ns, key)

    def scan(self, ns: str, prefix: str = "", after: str = "", limit: int = 100) -> ScanPage:
        return self.replica.scan(ns, prefix, after, limit)

    def subscribe(self, ns: str, prefix: str, listener: ChangeListener) -> Callable[[], None]:
        """Calls ``listener`` on the event loop for every change under ``ns``/``prefix``, local
        or remote, in change-log order. Returns the function that unsubscribes."""
        entry = (ns, prefix, listener)
        self._listeners.append(entry)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(entry)

        return unsubscribe

    # ---- writes -----------------------------------------------------------------------------

    async def put(
        self,
        ns: str,
        key: str,
        value: bytes,
        *,
        durable: bool = False,
        acks: int = 0,
        ack_wait: float | None = None,
    ) -> WriteResult:
        return await self._write(
            lambda r: r.put_lww(ns, key, value, time.time()), durable, acks, ack_wait
        )

    async def put_mv(
        self,
        ns: str,
        key: str,
        value: bytes,
        context: Mapping[str, int] | None = None,
        *,
        durable: bool = False,
        acks: int = 0,
        ack_wait: float | None = None,
    ) -> WriteResult:
        return await self._write(
            lambda r: r.put_mv(ns, key, value, context), durable, acks, ack_wait
        )

    async def delete(
        self,
        ns: str,
        key: str,
        *,
        durable: bool = False,
        acks: int = 0,
        ack_wait: float | None = None,
    ) -> WriteResult:
        return await self._write(lambda r: r.delete(ns, key), durable, acks, ack_wait)

    async def increment(
        self,
        ns: str,
        key: str,
        delta: int,
        *,
        durable: bool = False,
        acks: int = 0,
        ack_wait: float | None = None,
    ) -> WriteResult:
        return await self._write(lambda r: r.increment(ns, key, delta), durable, acks, ack_wait)

    async def set_add(
        self,
        ns: str,
        key: str,
        elements: Iterable[bytes],
        *,
        durable: bool = False,
        acks: int = 0,
        ack_wait: float | None = None,
    ) -> WriteResult:
        elems = list(elements)
        return await self._write(lambda r: r.set_add(ns, key, elems), durable, acks, ack_wait)

    async def set_remove(
        self,
        ns: str,
        key: str,
        elements: Iterable[bytes],
        *,
        durable: bool = False,
        acks: int = 0,
        ack_wait: float | None = None,
    ) -> WriteResult:
        elems = list(elements)
        return await self._write(lambda r: r.set_remove(ns, key, elems), durable, acks, ack_wait)

    def live_peers(self) -> int:
        return len(self.replica.live)

    async def _write(
        self,
        apply: Callable[[Replica], WriteResult],
        durable: bool,
        acks: int,
        ack_wait: float | None,
    ) -> WriteResult:
        replica = self.replica
        if acks > len(replica.live):
            raise FailedPrecondition(
                f"the write needs {acks} peer acknowledgements but only {len(replica.live)} "
                "peers are live; lower the number of acks or write with local consistency"
            )
        result = apply(replica)
        delta = replica.last_delta if result.seq else None
        self._after_change()
        if durable:
            await self.flush(durable=True)
        if acks and delta is not None:
            message = DeltaMessage(self.name, (delta,))
            await self._await_acks(message, acks, durable, ack_wait or self.config.push_timeout)
        return result

    async def _await_acks(
        self, message: Message, needed: int, durable: bool, wait_s: float
    ) -> None:
        """Sends ``message`` to every live peer; returns once ``needed`` have applied it."""
        replica = self.replica
        pending = {
            self._send(peer, message, durable=durable, limit_s=wait_s, capped=False)
            for peer in sorted(replica.live)
        }
        pending.discard(None)
        got = 0
        tasks: set[asyncio.Task[bool]] = {t for t in pending if t is not None}
        deadline = time.monotonic() + wait_s
        while tasks and got < needed:
            done, tasks = await asyncio.wait(
                tasks,
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not done:
                break
            got += sum(1 for t in done if not t.cancelled() and t.result())
        if got < needed:
            raise DeadlineExceeded(
                f"the write is applied here and will reach every replica, but only {got} of "
                f"the {needed} peer acknowledgements asked for came within {wait_s:.1f}s"
            )

    # ---- persistence ------------------------------------------------------------------------

    async def flush(self, durable: bool = True) -> None:
        """Returns once every change made so far is saved (and fsynced when ``durable``)."""
        waiter = asyncio.get_running_loop().create_future()
        self._durable_waiters.append(waiter)
        self._dirty.set()
        if durable:
            self._durable_wanted.set()
        await waiter

    def _take_batch(self) -> PersistBatch:
        batch = self.replica.take_persist()
        if self._unsaved is not None:  # a failed save: its keys are in no later batch
            batch = _combine(self._unsaved, batch)
            self._unsaved = None
        return batch

    async def _flusher(self) -> None:
        loop, store = self._loop, self._store
        assert loop is not None and store is not None
        while True:
            await self._dirty.wait()
            if not self._durable_wanted.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.persist_linger):
                        await self._durable_wanted.wait()
            self._dirty.clear()
            durable = self._durable_wanted.is_set()
            self._durable_wanted.clear()
            waiters, self._durable_waiters = self._durable_waiters, []
            batch = self._take_batch()
            try:
                await loop.run_in_executor(self._executor, store.save, batch, durable)
            except Exception as e:
                self._unsaved = batch
                log.error("state: saving to %s failed: %s", self._path, e)
                for w in waiters:
                    if not w.done():
                        w.set_exception(
                            Unavailable(f"the write could not be saved on this node: {e}")
                        )
                await asyncio.sleep(1.0)
                self._dirty.set()
                continue
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    # ---- sync -------------------------------------------------------------------------------

    async def _run(self) -> None:
        replica = self.replica
        while True:
            for out in replica.tick(time.time()):
                self._send(out.peer, out.message)
            self._wake.clear()
            delay = max(0.0, replica.next_tick_at() - time.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _send(
        self,
        peer: str,
        message: Message,
        *,
        durable: bool = False,
        limit_s: float | None = None,
        capped: bool = True,
    ) -> asyncio.Task[bool] | None:
        member = self._members.member(peer)
        if member is None or not member.address or not member.reachable:
            return None
        address = member.address
        if capped and self._in_flight.get(address, 0) >= self.config.max_in_flight_per_peer:
            self._metrics.dropped_payloads.labels("state_backpressure").inc()
            return None
        if limit_s is None:
            is_push = isinstance(message, DeltaMessage)
            cfg = self.config
            limit_s = cfg.push_timeout if is_push else cfg.anti_entropy_timeout
        self._in_flight[address] = self._in_flight.get(address, 0) + 1
        task = asyncio.create_task(self._call(peer, address, message, durable, limit_s))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)
        return task

    async def _call(
        self, peer: str, address: str, message: Message, durable: bool, limit_s: float
    ) -> bool:
        env = common_pb2.Envelope(version=VERSION, payload=encode_message(message))
        self.traffic.count("sent", message, len(env.payload))
        metadata = ((DURABLE_METADATA, "1"),) if durable else None
        try:
            stub = peer_pb2_grpc.PeerServiceStub(self._channels.get(address))
            call = stub.Replicate(env, timeout=limit_s, metadata=metadata)
            async for reply in call:
                msg = self._decode(reply, peer)
                if msg is None:
                    return False
                self.traffic.count("received", msg, len(reply.payload))
                _changes, answers = self.replica.handle(msg, time.time())
                self._after_change()
                for answer in answers:
                    self._send(peer, answer)
            return True
        except grpc.aio.AioRpcError as e:
            code = e.code()
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
                self._bad.warning(peer, "state: %s refused our sync message: %s", peer, e.details())
            else:
                log.debug("state: sync message to %s failed: %s", peer, code.name)
            return False
        except Exception:  # a broken channel must never stop the sync loop
            log.debug("state: sync message to %s failed", peer, exc_info=True)
            return False
        finally:
            left = self._in_flight.get(address, 1) - 1
            if left:
                self._in_flight[address] = left
            else:
                self._in_flight.pop(address, None)

    async def receive(
        self, request: common_pb2.Envelope, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[common_pb2.Envelope]:
        """Serves one ``Peer.Replicate`` call: applies the message, streams back the answers."""
        peer = caller_identity(context).name
        replica = self.replica
        if request.version != VERSION:
            self._reject(peer, "version", f"payload version {request.version}")
            raise FailedPrecondition(
                f"state payload version {request.version} is not supported by this node (it "
                f"reads version {VERSION}); upgrade the older node"
            )
        try:
            msg = decode_message(request.payload, self.max_receive_bytes)
        except RemoteProtocolError as e:
            self._reject(peer, "malformed", str(e))
            raise InvalidArgument(f"malformed state message: {e}") from None
        if msg.sender != peer:
            self._reject(peer, "impersonation", f"claims to be {msg.sender!r}")
            raise InvalidArgument(
                f"state message names sender {msg.sender!r} but the certificate is {peer!r}"
            )
        self.traffic.count("received", msg, len(request.payload))
        _changes, answers = replica.handle(msg, time.time())
        self._after_change()
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get(DURABLE_METADATA) == "1":
            await self.flush(durable=True)
        for answer in answers:
            payload = encode_message(answer)
            self.traffic.count("sent", answer, len(payload))
            yield common_pb2.Envelope(version=VERSION, payload=payload)

    def _decode(self, env: common_pb2.Envelope, peer: str) -> Message | None:
        try:
            if env.version != VERSION:
                raise UnsupportedVersion(f"payload version {env.version}")
            return decode_message(env.payload, self.max_receive_bytes)
        except RemoteProtocolError as e:
            self._reject(peer, "malformed", str(e))
            return None

    def _reject(self, peer: str, kind: str, detail: str) -> None:
        self._metrics.dropped_payloads.labels(f"state_{kind}").inc()
        self._bad.warning(peer, "state: dropped sync payload from %s: %s", peer, detail)

    # ---- after every replica change ---------------------------------------------------------

    def _after_change(self) -> None:
        replica = self.replica
        if replica.changes.last_seq != self._published:
            listeners = list(self._listeners)

            def wanted(namespace: str, key: str) -> bool:
                # Only changes someone listens to are read (a big value is read afresh).
                return any(namespace == ns and key.startswith(p) for ns, p, _ in listeners)

            for change in replica.changes.after(self._published, wanted):
                for ns, prefix, listener in listeners:
                    if change.namespace == ns and change.key.startswith(prefix):
                        try:
                            listener(change)
                        except Exception:
                            log.exception("state change listener failed")
            self._published = replica.changes.last_seq
            self._dirty.set()
        self._wake.set()

    def _membership_changed(self) -> None:
        replica = self._replica
        if replica is None:
            return
        members = self._members.members()
        names = {m.name for m in members}
        live = {m.name for m in self._members.peers()}
        # Left gracefully, or reaped from the member list after being dead long enough.
        departed = {m.name for m in members if m.state == LEFT} | (self._known - names)
        self._known |= names
        replica.on_membership(live, departed)
        self._wake.set()

    # ---- revocations ------------------------------------------------------------------------

    def _load_revocations(self) -> None:
        after = ""
        while True:
            page = self.replica.scan(REVOKED_NS, "", after, 1000)
            for key, value in page.entries:
                self._apply_revocation(key, value)
            if not page.next_after:
                return
            after = page.next_after

    def _on_revocation(self, change: Change) -> None:
        self._apply_revocation(change.key, change.value)

    def _apply_revocation(self, identity: str, value: ReadResult) -> None:
        assert self._revoked is not None
        if not value.found:
            self._revoked.pop(identity, None)
            return
        reason = value.values[0].decode(errors="replace") if value.values else "revoked"
        if self._revoked.get(identity) != reason:
            log.warning("identity %s is revoked: %s", identity, reason)
        self._revoked[identity] = reason or "revoked"


def _combine(old: PersistBatch, new: PersistBatch) -> PersistBatch:
    """One batch with the effect of saving ``old`` then ``new``."""
    keys = {(ns, key): blob for ns, key, blob in old.keys}
    keys.update({(ns, key): blob for ns, key, blob in new.keys})
    return PersistBatch(
        tuple((ns, key, blob) for (ns, key), blob in keys.items()),
        new.context,
        new.origin_counter,
        new.hlc,
        old.changes + new.changes,
    )

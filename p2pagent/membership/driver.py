"""The asyncio glue around the SWIM core: real time in, protocol messages out over the
``Peer`` service's mutual-TLS channels, member changes to subscribers.

Wire: each protocol message is one ``Peer.Gossip`` call (``PUSH_PULL`` uses
``Peer.PushPull``) carrying ``Envelope{version, payload}``. The answer a message gets at once
(an ACK to a PING, the reply to a PUSH_PULL) comes back as the RPC's response, so a direct
probe costs one round trip on an already-open channel. Everything else is one-way: a failed
call is treated like a lost datagram, which SWIM tolerates by design.

The incarnation is persisted in ``<data>/membership.json`` before it is used, and a restarted
member starts one above it: whatever the cluster said about its previous life, the new one
outbids it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from p2pagent._proto import common_pb2, peer_pb2_grpc
from p2pagent.errors import ConfigError, FailedPrecondition, InvalidArgument
from p2pagent.logs import RateLimitedLog
from p2pagent.membership import codec
from p2pagent.membership.config import MembershipConfig
from p2pagent.membership.hints import LoadHint
from p2pagent.membership.messages import Kind, Message, Send
from p2pagent.membership.swim import Counters, Swim
from p2pagent.membership.view import ALIVE, Listener, MemberView
from p2pagent.models.atomic import atomic_write
from p2pagent.transport.guard import caller_identity

if TYPE_CHECKING:
    from p2pagent.transport.channels import ChannelPool
    from p2pagent.transport.metrics import RpcMetrics

log = logging.getLogger(__name__)

#: Protocol messages allowed in flight to one address; beyond that a message is dropped
#: (as a congested network would) rather than queued behind a hung peer.
MAX_IN_FLIGHT_PER_PEER = 16
PUSH_PULL_TIMEOUT_S = 5.0
LEAVE_GRACE_S = 1.0


#: Tags the node sets itself; user tags may not use these keys.
SYSTEM_TAGS = ("address", "version", "accelerator", "generation")


def check_user_tags(tags: Mapping[str, str]) -> None:
    for key in SYSTEM_TAGS:
        if key in tags:
            raise ConfigError(f"tag {key!r} is set by the node itself; pick another tag name")


def check_tags(tags: Mapping[str, str], limit: int) -> None:
    size = codec.tags_size(tags)
    if size > limit:
        raise ConfigError(
            f"member tags take {size} bytes, over the limit of {limit}"
            " (membership.max_tags_bytes): shorten or drop some --tag values"
        )


class MembershipDriver:
    """Runs one member of the mesh; is the node's `PeerDirectory` and a component."""

    def __init__(
        self,
        name: str,
        config: MembershipConfig,
        *,
        seeds: list[str],
        tags: Mapping[str, str],
        data_dir: Path,
        channels: ChannelPool,
        metrics: RpcMetrics,
        address: Callable[[], str],
        rng: random.Random | None = None,
    ) -> None:
        check_tags(tags, config.max_tags_bytes)
        self.name = name
        self.config = config
        self._seeds = seeds
        self._tags = dict(tags)
        self._path = data_dir / "membership.json"
        self._channels = channels
        self._metrics = metrics
        self._address = address
        self._rng = rng or random.Random()
        self._core: Swim | None = None
        self._listeners: list[Listener] = []
        self._hint_listeners: list[Callable[[LoadHint], None]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._in_flight: dict[str, int] = {}
        self._persisted = 0
        self._bad = RateLimitedLog(log, 60.0)
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- PeerDirectory ----------------------------------------------------------------------

    def peers(self) -> list[MemberView]:
        return [m for m in self.members() if m.name != self.name and m.reachable]

    def member(self, name: str) -> MemberView | None:
        return None if self._core is None else self._core.member(name)

    def members(self) -> list[MemberView]:
        if self._core is None:
            return [MemberView(self.name, self._address(), ALIVE, 0, self._tags)]
        return self._core.members()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def set_tag(self, key: str, value: str | None) -> None:
        """Sets (None: removes) one tag of this member; it spreads with a new incarnation."""
        tags = dict(self._tags)
        if value is None:
            tags.pop(key, None)
        else:
            tags[key] = value
        check_tags(tags, self.config.max_tags_bytes)
        self._tags = tags
        if self._core is not None:
            self._core.set_tags(tags)
            self._after_core_call()

    # ---- load hints (``hints``) --------------------------------------------------------------

    def publish_load_hint(self, hint: LoadHint, urgent: bool = False) -> None:
        """Spreads this node's load hint with the membership gossip (see ``Swim.publish_hint``)."""
        core, loop = self._core, self._loop
        if core is not None and loop is not None:
            self._dispatch(core.publish_hint(hint, loop.time(), urgent))

    def subscribe_hints(self, listener: Callable[[LoadHint], None]) -> Callable[[], None]:
        """Calls ``listener`` with every believable, newer hint of another member."""
        self._hint_listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._hint_listeners.remove(listener)

        return unsubscribe

    def load_hints(self) -> list[LoadHint]:
        return [] if self._core is None else self._core.hints()

    def hints_rejected(self) -> dict[str, int]:
        return {} if self._core is None else self._core.hints_rejected

    @property
    def incarnation(self) -> int:
        return 0 if self._core is None else self._core.incarnation

    def counters(self) -> Counters | None:
        """The SWIM core's counters (None before start), for metrics."""
        return None if self._core is None else self._core.counters

    @property
    def awareness(self) -> int:
        """Lifeguard's local health awareness (0 healthy; probes stretch by 1 + it)."""
        return 0 if self._core is None else self._core.awareness

    def counts(self) -> tuple[int, int]:
        """(reachable members, known members), this one included."""
        members = self.members()
        return sum(1 for m in members if m.reachable), len(members)

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tags["address"] = self._address()
        check_tags(self._tags, self.config.max_tags_bytes)
        incarnation = self._load_incarnation() + 1
        self._save_incarnation(incarnation)
        now = self._loop.time()
        self._core = Swim(
            self.name,
            self._address(),
            self.config,
            self._rng,
            incarnation=incarnation,
            tags=self._tags,
            seeds=self._seeds,
            now=now,
        )
        log.info(
            "member %s at %s, incarnation %d, seeds %s",
            self.name,
            self._address(),
            incarnation,
            ", ".join(self._seeds) or "none",
        )
        self._dispatch(self._core.join(now))
        self._task = asyncio.create_task(self._run(), name="membership")

    async def stop(self) -> None:
        """Graceful leave: tell a few members, give the news a moment to spread, stop."""
        core, loop = self._core, self._loop
        if core is None or loop is None:
            return
        self._dispatch(core.leave(loop.time()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LEAVE_GRACE_S):
                while self._sends:
                    await asyncio.wait(set(self._sends))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for t in list(self._sends):
            t.cancel()
        await asyncio.gather(*self._sends, return_exceptions=True)

    async def _run(self) -> None:
        core, loop = self._core, self._loop
        assert core is not None and loop is not None
        while True:
            self._dispatch(core.tick(loop.time()))
            delay = max(0.0, core.next_deadline() - loop.time())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    # ---- receiving --------------------------------------------------------------------------

    def receive(self, request: common_pb2.Envelope, context: Any, method: str) -> bytes:
        """Handles one ``Peer.Gossip`` / ``Peer.PushPull`` call; returns the reply payload."""
        core, loop = self._core, self._loop
        if core is None or loop is None:
            raise FailedPrecondition("membership is not running yet; retry shortly")
        peer = caller_identity(context).name
        msg = self._decode(request, peer, method)
        if msg.src != peer:
            self._reject(peer, "impersonation", f"claims to be {msg.src!r}")
            raise InvalidArgument(
                f"membership message names sender {msg.src!r} but the certificate is {peer!r}"
            )
        sends = core.handle(msg, loop.time())
        reply: bytes = b""
        rest: list[Send] = []
        for s in sends:
            if (
                not reply
                and s.message.kind in (Kind.ACK, Kind.PUSH_PULL_REPLY)
                and (s.name == msg.src or s.address == msg.src_address)
            ):
                reply = codec.encode(s.message)
            else:
                rest.append(s)
        self._dispatch(rest)
        return reply

    def _decode(self, env: common_pb2.Envelope, peer: str, method: str) -> Message:
        if env.version != codec.VERSION:
            self._reject(peer, "version", f"payload version {env.version}")
            raise FailedPrecondition(
                f"membership payload version {env.version} is not supported by this node"
                f" (it reads version {codec.VERSION}); upgrade the older node"
            )
        try:
            return codec.decode(env.payload, self.config.max_tags_bytes)
        except codec.MalformedMessage as e:
            self._reject(peer, "malformed", str(e))
            raise InvalidArgument(f"malformed membership payload in {method}: {e}") from None

    def _reject(self, peer: str, kind: str, detail: str) -> None:
        self._metrics.dropped_payloads.labels(f"membership_{kind}").inc()
        self._bad.warning(peer, "dropped membership payload from %s: %s", peer, detail)

    # ---- sending ----------------------------------------------------------------------------

    def _dispatch(self, sends: list[Send]) -> None:
        for send in sends:
            if not send.address:
                continue
            if self._in_flight.get(send.address, 0) >= MAX_IN_FLIGHT_PER_PEER:
                continue
            self._in_flight[send.address] = self._in_flight.get(send.address, 0) + 1
            task = asyncio.create_task(self._send(send))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
        self._after_core_call()

    async def _send(self, send: Send) -> None:
        env = common_pb2.Envelope(version=codec.VERSION, payload=codec.encode(send.message))
        try:
            stub = peer_pb2_grpc.PeerServiceStub(self._channels.get(send.address))
            if send.message.kind is Kind.PUSH_PULL:
                reply = await stub.PushPull(env, timeout=PUSH_PULL_TIMEOUT_S)
            else:
                reply = await stub.Gossip(env, timeout=self.config.probe_interval)
        except grpc.aio.AioRpcError as e:
            # A lost message as far as SWIM is concerned; a refused one is worth a word.
            code = e.code()
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
                self._bad.warning(
                    send.address, "%s refused our message: %s", send.address, e.details()
                )
            else:
                log.debug("membership message to %s failed: %s", send.address, code.name)
            return
        except Exception:  # a broken channel must never kill the protocol
            log.debug("membership message to %s failed", send.address, exc_info=True)
            return
        finally:
            left = self._in_flight.get(send.address, 1) - 1
            if left:
                self._in_flight[send.address] = left
            else:
                self._in_flight.pop(send.address, None)
        if reply.payload and self._core is not None and self._loop is not None:
            peer = send.name or send.address
            try:
                msg = self._decode(reply, peer, "reply")
            except (FailedPrecondition, InvalidArgument):
                return
            self._dispatch(self._core.handle(msg, self._loop.time()))

    # ---- after every core call --------------------------------------------------------------

    def _after_core_call(self) -> None:
        core = self._core
        if core is None:
            return
        if core.incarnation != self._persisted:
            self._save_incarnation(core.incarnation)
        events = core.take_events()
        for view in events:
            if view.name != self.name:
                log.info(
                    "member %s is %s (incarnation %d)", view.name, view.state, view.incarnation
                )
            for listener in list(self._listeners):
                try:
                    listener(view)
                except Exception:
                    log.exception("membership listener failed")
        for hint in core.take_hints():
            for hint_listener in list(self._hint_listeners):
                try:
                    hint_listener(hint)
                except Exception:
                    log.exception("load hint listener failed")
        self._wake.set()

    # ---- incarnation persistence ------------------------------------------------------------

    def _load_incarnation(self) -> int:
        try:
            doc = json.loads(self._path.read_text())
            value = doc["incarnation"]
            if not isinstance(value, int) or value < 0:
                raise ValueError
            return value
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(
                f"{self._path} is corrupt; delete it to start this member with a fresh"
                " incarnation (peers will see it as a new life)"
            ) from None

    def _save_incarnation(self, incarnation: int) -> None:
        payload = json.dumps({"incarnation": incarnation}).encode()
        atomic_write(self._path, [payload])
        self._persisted = incarnation

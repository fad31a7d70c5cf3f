"""The asyncio driver of averaging: runs one ``Averager`` per training run this node takes
part in, moves parts over the ``Peer.AverageParts`` stream (mutual TLS, the sender named by
its verified certificate) and keeps the run's counters. Thin glue: the protocol is in
``round.py`` and ``averager.py``.

A node joins a run by carrying the tag ``train/<run>`` (value: the run's parameter
fingerprint); the participants of a round are the reachable members carrying it. Membership
news of a death goes to every run's core at once, so a round stops waiting for a dead member.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from p2pagent._proto import peer_pb2_grpc
from p2pagent.errors import (
    ConfigError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    quoted,
)
from p2pagent.logs import RateLimitedLog
from p2pagent.membership.view import DEAD, LEFT, MemberView, PeerDirectory
from p2pagent.training.averager import Averager
from p2pagent.training.config import TrainingConfig
from p2pagent.training.groups import check_run_name, participants, run_tag
from p2pagent.training.messages import Part, Refused, RoundDone, Send, Vector
from p2pagent.training.wire import DTYPE_OF_COMPRESSION, part_messages, wire_bytes
from p2pagent.transport.channels import ChannelPool

log = logging.getLogger(__name__)

#: Seconds one part's stream may take before the send is given up (the core recovers).
SEND_TIMEOUT_S = 120.0
#: Seconds ``average`` polls membership while waiting for ``min_members``.
MEMBER_POLL_S = 0.1
#: Seconds a channel replaced by a fresh one keeps serving the calls already on it.
RETIRED_CHANNEL_GRACE_S = 30.0


@dataclass
class RunStats:
    rounds: int = 0
    last_round: int = -1
    last_round_s: float = 0.0
    phase_timeout_s: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    refused: int = 0
    incomplete_rounds: int = 0


@dataclass
class Run:
    name: str
    spec: str
    length: int
    averager: Averager
    stats: RunStats = field(default_factory=RunStats)
    waiter: asyncio.Future[RoundDone] | None = None
    timer: asyncio.TimerHandle | None = None
    #: The model this run publishes, as the user's loop last named it ("" = none).
    model: str = ""
    #: Loop time of the last ``average`` call here (which runs to leave first for room).
    last_used: float = 0.0


class TrainingDriver:
    def __init__(
        self,
        name: str,
        config: TrainingConfig,
        *,
        channels: ChannelPool,
        members: PeerDirectory,
        set_tag: Callable[[str, str | None], None],
    ) -> None:
        self.name = name
        self.config = config
        self._channels = channels
        self._members = members
        self._set_tag = set_tag
        self.runs: dict[str, Run] = {}
        self._sends: set[asyncio.Task[None]] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._bad = RateLimitedLog(log, 10.0)
        #: Member -> the incarnation a fresh channel was last dialled for (see ``_send``).
        self._redialled: dict[str, int] = {}

    async def start(self) -> None:
        self._unsubscribe = self._members.subscribe(self._member_changed)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        for run in self.runs.values():
            if run.timer is not None:
                run.timer.cancel()
            if run.waiter is not None and not run.waiter.done():
                run.waiter.cancel()
        for task in list(self._sends):
            task.cancel()
        await asyncio.gather(*self._sends, return_exceptions=True)

    # ---- the user's side --------------------------------------------------------------------

    def join(self, run: str, spec: str, length: int) -> Run:
        """This node's state for ``run``, joining it (setting the tag) the first time."""
        check_run_name(run)
        known = self.runs.get(run)
        if known is not None:
            if known.spec != spec or known.length != length:
                raise InvalidArgument(
                    f"run {quoted(run)} averages {known.length} values with fingerprint "
                    f"{known.spec[:16]} here; these parameters ({length} values, "
                    f"{spec[:16]}) differ: use a new run name for another model"
                )
            return known
        self._tag(run, spec)
        entry = Run(run, spec, length, Averager(self.name, run, spec, self.config, length))
        self.runs[run] = entry
        log.info("joined training run %s (%d parameters)", run, length)
        return entry

    def _tag(self, run: str, spec: str) -> None:
        """Sets the run's member tag. A member's tags are bounded (membership.max_tags_bytes),
        so when a new run's tag does not fit, the runs this node averaged in longest ago (and
        is not averaging in now) are left to make room: a node that takes part in many runs
        over its life keeps its recent ones."""
        while True:
            try:
                self._set_tag(run_tag(run), spec)
                return
            except (ConfigError, InvalidArgument):
                idle = [r for r in self.runs.values() if r.waiter is None and not r.averager.busy]
                if not idle:
                    raise
                self.leave(min(idle, key=lambda r: r.last_used).name)

    def leave(self, run: str) -> None:
        """Leaves ``run``: drops its tag and its state here (joining again starts afresh and
        catches up with the run's round)."""
        entry = self.runs.pop(run, None)
        if entry is None:
            return
        if entry.timer is not None:
            entry.timer.cancel()
        self._set_tag(run_tag(run), None)
        log.info("left training run %s (%d rounds here)", run, entry.stats.rounds)

    def participants(self, run: str) -> list[str]:
        view = [(m.name, m.tags) for m in self._members.members() if m.reachable]
        return participants(view, run)

    async def average(
        self, run: str, spec: str, vector: Vector, weight: float, min_members: int, wait_s: float
    ) -> RoundDone:
        """Averages ``vector`` with the run's members; returns this node's round outcome."""
        entry = self.join(run, spec, int(vector.shape[0]))
        loop = asyncio.get_running_loop()
        entry.last_used = loop.time()
        until = loop.time() + wait_s
        while len(self.participants(run)) < min_members:
            if loop.time() >= until:
                raise DeadlineExceeded(
                    f"run {quoted(run)} has {len(self.participants(run))} members after "
                    f"{wait_s:.0f}s, fewer than the {min_members} asked for"
                )
            await asyncio.sleep(MEMBER_POLL_S)
        if entry.waiter is not None:
            raise FailedPrecondition(
                f"a round of run {quoted(run)} is already running on this node; average "
                "from one loop at a time"
            )
        while entry.averager.busy:
            # The round a cancelled call started is still running: wait for its end (at
            # most its last deadline) rather than refuse the loop that called again.
            if loop.time() >= until:
                raise DeadlineExceeded(
                    f"the previous round of run {quoted(run)} did not end within {wait_s:.0f}s"
                )
            await asyncio.sleep(MEMBER_POLL_S)
        waiter: asyncio.Future[RoundDone] = loop.create_future()
        entry.waiter = waiter
        try:
            sends = entry.averager.begin(self.participants(run), vector, weight, loop.time())
            self._after(entry, sends)
            done = await waiter
            if done.behind and not entry.averager.busy:
                # This node was rounds behind the run (it restarted): the round it began is
                # over everywhere else. Average in the run's round now, with the same
                # parameters, rather than return a round nothing was averaged in.
                waiter = loop.create_future()
                entry.waiter = waiter
                sends = entry.averager.begin(self.participants(run), vector, weight, loop.time())
                self._after(entry, sends)
                done = await waiter
            return done
        finally:
            entry.waiter = None

    # ---- the peers' side --------------------------------------------------------------------

    def receive(self, part: Part, nbytes: int) -> None:
        """A part a peer streamed (``part.sender`` is its verified name). Raises NotFound
        for a run this node is not in and InvalidArgument when the core refused the part."""
        entry = self.runs.get(part.run)
        if entry is None:
            raise NotFound(
                f"this node takes no part in training run {quoted(part.run)}; the sender's "
                "membership view is stale or the run name is wrong"
            )
        entry.stats.bytes_received += nbytes
        loop = asyncio.get_running_loop()
        sends = entry.averager.handle(part, loop.time())
        refused = self._after(entry, sends)
        mine = [r for r in refused if r.sender == part.sender]
        if mine:
            raise InvalidArgument(f"part refused by {self.name}: {mine[0].reason}")

    def _member_changed(self, member: MemberView) -> None:
        if member.state not in (DEAD, LEFT):
            return
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:
            return
        for entry in self.runs.values():
            self._after(entry, entry.averager.member_gone(member.name, now))

    # ---- glue -------------------------------------------------------------------------------

    def _after(self, entry: Run, sends: list[Send]) -> list[Refused]:
        for send in sends:
            task = asyncio.create_task(self._send(entry, send))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
        refused: list[Refused] = []
        for ev in entry.averager.take_events():
            if isinstance(ev, Refused):
                refused.append(ev)
                entry.stats.refused += 1
                log.warning(
                    "training run %s round %d: refused a part from node %s: %s",
                    ev.run,
                    ev.round_no,
                    ev.sender,
                    ev.reason,
                )
            else:
                self._finished(entry, ev)
        self._arm(entry)
        return refused

    def _finished(self, entry: Run, done: RoundDone) -> None:
        st = entry.stats
        st.rounds += 1
        st.last_round = done.round_no
        st.last_round_s = done.finished - done.started
        st.phase_timeout_s = done.phase_timeout
        if not done.complete:
            st.incomplete_rounds += 1
        if entry.waiter is not None and not entry.waiter.done():
            entry.waiter.set_result(done)

    def _arm(self, entry: Run) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        at = entry.averager.next_deadline()
        if at != float("inf"):
            loop = asyncio.get_running_loop()
            entry.timer = loop.call_at(at, self._tick, entry)

    def _tick(self, entry: Run) -> None:
        entry.timer = None
        self._after(entry, entry.averager.tick(asyncio.get_running_loop().time()))

    async def _send(self, entry: Run, send: Send) -> None:
        member = self._members.member(send.to)
        if member is None or not member.reachable:
            return
        try:
            try:
                await self._call(member.address, send)
            except grpc.aio.AioRpcError as e:
                if e.code() is not grpc.StatusCode.UNAVAILABLE or not self._redial(member):
                    raise
                # A member that restarted at the same address: the old channel would reach
                # it only after its reconnect backoff (seconds: rounds are shorter), and the
                # parts lost meanwhile cost the member its first rounds back. Once per
                # incarnation, so a dead member is not dialled again for every part.
                await self._call(member.address, send)
            dtype = DTYPE_OF_COMPRESSION[self.config.compression]
            entry.stats.bytes_sent += wire_bytes(int(send.part.data.shape[0]), dtype)
        except grpc.aio.AioRpcError as e:
            # The core copes with a lost part (deadlines, backups); say why once in a while.
            self._bad.warning(
                f"avg-send-{send.to}",
                "training run %s: part for %s not delivered: %s %s",
                entry.name,
                send.to,
                e.code().name,
                e.details(),
            )

    async def _call(self, address: str, send: Send) -> None:
        stub = peer_pb2_grpc.PeerServiceStub(self._channels.get(address))
        await stub.AverageParts(
            part_messages(send.part, self.config.compression), timeout=SEND_TIMEOUT_S
        )

    def _redial(self, member: MemberView) -> bool:
        """Replaces the channel to ``member`` by a fresh one, once per incarnation of it;
        False when that was done already."""
        if self._redialled.get(member.name) == member.incarnation:
            return False
        self._redialled[member.name] = member.incarnation
        self._channels.redial(member.address)
        return True

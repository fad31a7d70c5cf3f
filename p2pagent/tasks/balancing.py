"""Load balancing between peers, the glue around the pure steal policy: load hints out and in
(membership gossip, ``tasks/hinting.py``), lease reports to the origins of the tasks held here
(``Peer.Load``), the thief side (ask a loaded peer for work with ``Peer.Steal``) and the
victim side (hand over queued tasks this node originated).

What peers know of our load comes from hints, published only when it changed materially; a
full report (with the ids of the tasks held) goes only to each origin whose tasks we hold,
since its lease table needs them. An idle node sends neither.

A steal is transactional at the victim (:func:`p2pagent.tasks.handover.hand_over`), before the
answer leaves.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from p2pagent._proto import common_pb2, peer_pb2, peer_pb2_grpc
from p2pagent.errors import InvalidArgument, NotFound, P2PAgentError, RemoteProtocolError
from p2pagent.logs import RateLimitedLog
from p2pagent.membership.hints import LoadHint
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.handover import hand_over
from p2pagent.tasks.hinting import HintChannel, HintPolicy, from_hint, to_hint
from p2pagent.tasks.leases import Action, LeaseTable
from p2pagent.tasks.load import LoadBoard, LoadReport, make_report
from p2pagent.tasks.queue import TaskQueue
from p2pagent.tasks.steal import StealPolicy
from p2pagent.tasks.wire import decode_report, encode_report, task_from_spec, task_to_spec
from p2pagent.transport.metrics import RpcMetrics

log = logging.getLogger(__name__)

LOAD_CALL_TIMEOUT_S = 5.0
#: A steal request that reaches the victim with less time than this left before the thief's
#: deadline gets nothing: tasks handed over in an answer the thief has stopped waiting for sit
#: leased to it, unrun, until the lease expires (``tasks.lease_s``).
STEAL_ANSWER_MARGIN_S = 0.25


class Balancer:
    """Load reports and stealing of one node; owned by the tasks driver, which gives it the
    node's queue and lease table and is called back to apply lease actions and run its queue."""

    def __init__(
        self,
        name: str,
        cfg: TasksConfig,
        *,
        queue: TaskQueue,
        leases: LeaseTable,
        models: Callable[[], list[str]],
        stub: Callable[[str], peer_pb2_grpc.PeerAsyncStub],
        metrics: RpcMetrics,
        rng: random.Random,
        apply: Callable[[list[Action]], None],
        kick: Callable[[], None],
        wake: Callable[[], None],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        hints: HintChannel | None = None,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.queue = queue
        self.leases = leases
        self.board = LoadBoard(cfg)
        self.policy = StealPolicy(name, rng, cfg, 1.0)
        self.stolen_in = 0
        self.stolen_out = 0
        #: Steal requests that came too close to the thief's deadline to be answered.
        self.late_steals = 0
        self._models = models
        self._stub = stub
        self._metrics = metrics
        self._apply = apply
        self._kick = kick
        self._wake = wake
        self._spawn = spawn
        self._seq = 0
        self._bad = RateLimitedLog(log, 60.0)
        self._hints = hints
        self.hint_policy = HintPolicy(cfg)
        #: Newest ``Peer.Load`` report seq from each peer: older ones are stale.
        self._report_seq: dict[str, int] = {}

    # ---- load reports -----------------------------------------------------------------------

    def report(self) -> LoadReport:
        self._seq += 1
        now = time.time()
        return make_report(
            self.name,
            self._seq,
            self.queue.queued(),
            self.queue.running(),
            # Estimates are seconds of this node's engine time (measured per row, batching
            # included), so the node drains them one after another: a capacity of one.
            1,
            1.0,
            self._models(),
            self.queue.stealable(now),
        )

    def send_report(self, peer: str) -> None:
        self._spawn(self._exchange(peer, self.report()))

    async def _exchange(self, peer: str, report: LoadReport) -> None:
        try:
            reply = await self._stub(peer).Load(encode_report(report), timeout=LOAD_CALL_TIMEOUT_S)
            self.on_report(decode_report(reply))
        except (grpc.aio.AioRpcError, RemoteProtocolError, NotFound):
            return

    def on_report(self, report: LoadReport) -> None:
        """A ``Peer.Load`` report (from a node holding our tasks, or answering us): renews
        the leases of what it holds. Peers' load for stealing comes from hints instead (the
        two are numbered apart, so they are kept apart)."""
        if report.seq <= self._report_seq.get(report.node, -1):
            return
        self._report_seq[report.node] = report.seq
        self._apply(self.leases.on_report(report, time.time()))

    def on_hint(self, hint: LoadHint) -> None:
        """A peer's load hint, already judged believable and newer by membership."""
        report = from_hint(hint)
        if self.board.update(report, time.time()) and (
            report.backlog_s >= self.cfg.min_victim_backlog_s
        ):
            self._wake()  # a peer has work to steal: consider it now

    def publish_if_changed(self, now: float) -> None:
        """Tells the mesh our load if it changed materially since we last did."""
        if self._hints is None:
            return
        hint = to_hint(self.report())
        publish, urgent = self.hint_policy.decide(hint, now)
        if publish:
            self._hints.publish_load_hint(hint, urgent)

    def origins_held(self) -> set[str]:
        """Other origins whose tasks are queued or running here: they want our reports."""
        return {
            t.origin for t in (*self.queue.queued(), *self.queue.running()) if t.origin != self.name
        }

    def handle_load(self, env: common_pb2.Envelope, caller: str) -> common_pb2.Envelope:
        try:
            report = decode_report(env)
        except RemoteProtocolError as e:
            self._metrics.dropped_payloads.labels("tasks_load").inc()
            self._bad.warning(caller, "tasks: bad load report from %s: %s", caller, e)
            raise InvalidArgument(str(e)) from None
        if report.node != caller:
            raise InvalidArgument(f"load report names {report.node!r} but the caller is {caller!r}")
        self.on_report(report)
        return encode_report(self.report())

    def forget(self, node: str) -> None:
        """``node`` is dead or gone: its reports and steal history go."""
        self.board.forget(node)
        self._report_seq.pop(node, None)
        self.policy.on_member_dead(node)

    # ---- thief ------------------------------------------------------------------------------

    def may_steal_soon(self, now: float) -> bool:
        """Cheap pre-check of the steal policy: our queue is low and some peer has work."""
        return self.queue.queued_cost_s() < self.cfg.steal_low_water_s and self.board.any_backlog(
            now, self.cfg.min_victim_backlog_s
        )

    def maybe_steal(self, now: float) -> None:
        attempt = self.policy.decide(
            now, self.queue.queued_cost_s(), self._models(), self.board.fresh(now)
        )
        if attempt is not None:
            self._spawn(self._steal(attempt.victim, attempt.max_tasks, list(attempt.models)))

    async def _steal(self, victim: str, max_tasks: int, models: list[str]) -> None:
        got = 0
        try:
            resp = await self._stub(victim).Steal(
                peer_pb2.StealRequest(
                    thief=self.name, max_tasks=max_tasks, models=models, thief_speed=1.0
                ),
                timeout=self.cfg.steal_timeout_s,
            )
            now = time.time()
            for spec in resp.tasks:
                try:
                    self.queue.push(task_from_spec(spec), now, stolen=True)
                except P2PAgentError as e:  # this one only: its lease brings it back
                    log.debug("stolen task %s not queued: %s", spec.task_id, e)
                    continue
                got += 1
        except (grpc.aio.AioRpcError, NotFound, P2PAgentError):
            pass
        self.stolen_in += got
        self.policy.on_steal_result(victim, got, time.time())
        self._kick()

    # ---- victim -----------------------------------------------------------------------------

    def handle_steal(
        self, req: peer_pb2.StealRequest, caller: str, time_left_s: float | None = None
    ) -> peer_pb2.StealResponse:
        """Hands over up to ``req.max_tasks`` queued tasks; ``time_left_s`` is the time left
        before the thief's deadline (None: none)."""
        if req.thief != caller:
            raise InvalidArgument(f"steal names thief {req.thief!r} but the caller is {caller!r}")
        if not (math.isfinite(req.thief_speed) and req.thief_speed >= 0):
            raise InvalidArgument(f"thief_speed must be finite and >= 0, got {req.thief_speed}")
        if time_left_s is not None and time_left_s < STEAL_ANSWER_MARGIN_S:
            self.late_steals += 1
            return peer_pb2.StealResponse()
        granted, actions = hand_over(
            self.queue, self.leases, self.name, req.thief, req.max_tasks, req.models,
            req.thief_speed or 1.0, time.time(),
        )  # fmt: skip
        self._apply(actions)
        self.stolen_out += len(granted)
        return peer_pb2.StealResponse(tasks=[task_to_spec(t) for t in granted])

"""State RPCs: the ``Agent`` handlers (public) and the ``Peer`` handlers (node-to-node) of
the state capability. Thin: decode, call the driver, encode; errors are `p2pagent.errors`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc

from p2pagent._proto import agent_pb2, common_pb2
from p2pagent.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    quoted,
)
from p2pagent.identity.spiffe import parse
from p2pagent.state.driver import REVOKED_NS, SYSTEM_PREFIX, StateDriver
from p2pagent.state.values import Change, ReadResult, WriteResult
from p2pagent.transport.guard import caller_identity

if TYPE_CHECKING:
    from p2pagent.identity.spiffe import Identity

Ctx = grpc.aio.ServicerContext[Any, Any]


class StateNode(Protocol):
    """What the state handlers need of the node."""

    @property
    def state(self) -> StateDriver: ...

    @property
    def identity(self) -> Identity: ...

    #: Identity URI -> reason, for revocations this node applies at once.
    @property
    def revoked(self) -> dict[str, str]: ...


#: Changes read per page when a Watch replays from ``from_seq`` (a page holds references to
#: values the replica holds anyway; each is encoded only when it is sent).
REPLAY_PAGE = 1000
#: Trailing metadata key of a Watch ended for falling behind: the ``from_seq`` to resume from.
RESUME_SEQ = "p2pagent-resume-from-seq"
#: Bytes counted for a change besides its values (namespace, key, seq, framing).
CHANGE_OVERHEAD = 128
#: Most entries one Scan page returns.
MAX_SCAN_LIMIT = 10_000
#: Default wait for peer acknowledgements when the call has no deadline.
DEFAULT_ACK_TIMEOUT_S = 10.0


def value_proto(r: ReadResult) -> agent_pb2.GetResponse:
    return agent_pb2.GetResponse(
        found=r.found,
        type=agent_pb2.ValueType.Name(int(r.kind)) if r.kind is not None else None,
        values=list(r.values),
        counter=r.counter,
        elements=list(r.elements),
        version=dict(r.version),
    )


def change_proto(c: Change) -> agent_pb2.WatchResponse:
    return agent_pb2.WatchResponse(
        seq=c.seq, namespace=c.namespace, key=c.key, deleted=c.deleted, value=value_proto(c.value)
    )


class WatchBehind(ResourceExhausted):
    """A Watch consumer fell further behind than the stream's byte budget."""

    def __init__(self, budget: int, resume_seq: int) -> None:
        super().__init__(
            f"this watcher fell more than {budget} bytes behind (state.watch_buffer_bytes); "
            f"reconnect with from_seq={resume_seq} (changes up to it were sent)"
        )
        self.trailers = ((RESUME_SEQ, str(resume_seq)),)


def change_bytes(c: Change) -> int:
    """What a queued change costs, roughly: its values and elements plus a fixed overhead."""
    v = c.value
    return (
        CHANGE_OVERHEAD
        + len(c.namespace)
        + len(c.key)
        + sum(map(len, v.values))
        + sum(map(len, v.elements))
    )


def _writable_namespace(ns: str) -> str:
    if not ns:
        raise InvalidArgument("namespace is empty: name one (for example 'default')")
    if ns.startswith(SYSTEM_PREFIX):
        raise InvalidArgument(
            f"namespace {quoted(ns)} is reserved for the system (names starting with '_' are "
            "read-only through the API); pick another namespace"
        )
    return ns


#: The answer of each write RPC: the same two fields (version, acked_by), one type per RPC.
WriteAnswer = TypeVar(
    "WriteAnswer",
    agent_pb2.PutResponse,
    agent_pb2.DeleteResponse,
    agent_pb2.IncrementResponse,
    agent_pb2.SetAddResponse,
    agent_pb2.SetRemoveResponse,
)


class StateAgentApi:
    _state_node: StateNode

    def _state(self) -> StateDriver:
        return self._state_node.state

    async def _write(
        self,
        ns: str,
        options: agent_pb2.WriteOptions,
        context: Ctx,
        op: str,
        call: Any,
        answer: type[WriteAnswer],
    ) -> WriteAnswer:
        _writable_namespace(ns)
        driver = self._state()
        acks = _acks_needed(options, driver.live_peers(), op)
        remaining = context.time_remaining()
        timeout = DEFAULT_ACK_TIMEOUT_S if remaining is None else max(0.05, remaining - 0.05)
        result: WriteResult = await call(driver, options.durable, acks, timeout)
        return answer(version=dict(result.version), acked_by=1 + acks)

    async def Put(self, request: agent_pb2.PutRequest, context: Ctx) -> agent_pb2.PutResponse:
        ns, key, value = request.namespace, request.key, request.value
        if request.type in (agent_pb2.VALUE_TYPE_UNSPECIFIED, agent_pb2.VALUE_TYPE_LWW):

            async def call(d: StateDriver, durable: bool, acks: int, t: float) -> WriteResult:
                return await d.put(ns, key, value, durable=durable, acks=acks, ack_wait=t)

        elif request.type == agent_pb2.VALUE_TYPE_MV:
            ctx = dict(request.context) or None

            async def call(d: StateDriver, durable: bool, acks: int, t: float) -> WriteResult:
                return await d.put_mv(ns, key, value, ctx, durable=durable, acks=acks, ack_wait=t)

        else:
            raise InvalidArgument(
                f"Put of {ns}/{key} with type {request.type}: Put writes registers (LWW or MV);"
                " use Increment for counters and SetAdd for sets"
            )
        return await self._write(ns, request.options, context, "Put", call, agent_pb2.PutResponse)

    async def Delete(
        self, request: agent_pb2.DeleteRequest, context: Ctx
    ) -> agent_pb2.DeleteResponse:
        ns, key = request.namespace, request.key

        async def call(d: StateDriver, durable: bool, acks: int, t: float) -> WriteResult:
            return await d.delete(ns, key, durable=durable, acks=acks, ack_wait=t)

        answer = agent_pb2.DeleteResponse
        return await self._write(ns, request.options, context, "Delete", call, answer)

    async def Increment(
        self, request: agent_pb2.IncrementRequest, context: Ctx
    ) -> agent_pb2.IncrementResponse:
        ns, key, delta = request.namespace, request.key, request.delta

        async def call(d: StateDriver, durable: bool, acks: int, t: float) -> WriteResult:
            return await d.increment(ns, key, delta, durable=durable, acks=acks, ack_wait=t)

        answer = agent_pb2.IncrementResponse
        return await self._write(ns, request.options, context, "Increment", call, answer)

    async def SetAdd(
        self, request: agent_pb2.SetAddRequest, context: Ctx
    ) -> agent_pb2.SetAddResponse:
        ns, key, elements = request.namespace, request.key, list(request.elements)

        async def call(d: StateDriver, durable: bool, acks: int, t: float) -> WriteResult:
            return await d.set_add(ns, key, elements, durable=durable, acks=acks, ack_wait=t)

        answer = agent_pb2.SetAddResponse
        return await self._write(ns, request.options, context, "SetAdd", call, answer)

    async def SetRemove(
        self, request: agent_pb2.SetRemoveRequest, context: Ctx
    ) -> agent_pb2.SetRemoveResponse:
        ns, key, elements = request.namespace, request.key, list(request.elements)

        async def call(d: StateDriver, durable: bool, acks: int, t: float) -> WriteResult:
            return await d.set_remove(ns, key, elements, durable=durable, acks=acks, ack_wait=t)

        answer = agent_pb2.SetRemoveResponse
        return await self._write(ns, request.options, context, "SetRemove", call, answer)

    async def Get(self, request: agent_pb2.GetRequest, context: Ctx) -> agent_pb2.GetResponse:
        if not request.namespace or not request.key:
            raise InvalidArgument("Get needs a namespace and a key")
        return value_proto(self._state().get(request.namespace, request.key))

    async def Scan(self, request: agent_pb2.ScanRequest, context: Ctx) -> agent_pb2.ScanResponse:
        if not request.namespace:
            raise InvalidArgument("Scan needs a namespace")
        limit = request.limit or 100
        if limit > MAX_SCAN_LIMIT:
            raise InvalidArgument(f"Scan limit {limit} is over {MAX_SCAN_LIMIT}; page instead")
        page = self._state().scan(request.namespace, request.prefix, request.page_token, limit)
        return agent_pb2.ScanResponse(
            entries=[agent_pb2.ScanEntry(key=k, value=value_proto(v)) for k, v in page.entries],
            next_page_token=page.next_after,
        )

    async def Watch(
        self, request: agent_pb2.WatchRequest, context: Ctx
    ) -> AsyncIterator[agent_pb2.WatchResponse]:
        if not request.namespace:
            raise InvalidArgument("Watch needs a namespace")
        driver = self._state()
        ns, prefix = request.namespace, request.prefix
        budget = driver.config.watch_buffer_bytes
        # None in the queue: the consumer fell behind the budget; end the stream.
        queue: asyncio.Queue[Change | None] = asyncio.Queue()
        held = 0
        behind = False

        def listener(change: Change) -> None:
            nonlocal held, behind
            if behind:
                return
            size = change_bytes(change)
            if held and held + size > budget:
                # Free what is held at once (the consumer resumes from its last seq and the
                # change log replays the rest), and stop listening.
                behind = True
                held = 0
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)
                unsubscribe()
                return
            held += size
            queue.put_nowait(change)

        # Subscribe first, then replay: a change made in between is in both and the seq
        # filter below drops the second copy.
        unsubscribe = driver.subscribe(ns, prefix, listener)
        try:
            replica = driver.replica
            last = request.from_seq or replica.changes.last_seq
            if request.from_seq:
                if request.from_seq > replica.changes.last_seq:
                    raise InvalidArgument(
                        f"from_seq {request.from_seq} is ahead of this node's change log "
                        f"({replica.changes.last_seq}); sequence numbers are per node"
                    )
                while True:
                    changes, complete = replica.changes_since(last, ns, prefix, REPLAY_PAGE)
                    if not complete:
                        raise FailedPrecondition(
                            f"changes after seq {request.from_seq} are no longer held (the "
                            f"oldest is {replica.changes.first_seq}); Scan the prefix again, "
                            "then Watch from the seq Scan ran at"
                        )
                    for c in changes:
                        yield change_proto(c)
                        last = c.seq
                    if len(changes) < REPLAY_PAGE:
                        break
            while True:
                change = await queue.get()
                if change is None:
                    raise WatchBehind(budget, last)
                held -= change_bytes(change)
                if change.seq > last:
                    yield change_proto(change)
                    last = change.seq
        finally:
            unsubscribe()

    async def Revoke(
        self, request: agent_pb2.RevokeRequest, context: Ctx
    ) -> agent_pb2.RevokeResponse:
        # Only admin and node identities get here (the authorization table gates Revoke).
        caller = caller_identity(context)
        target = parse(request.identity)  # raises InvalidArgument with the reason
        if target.cluster != caller.cluster:
            raise InvalidArgument(
                f"{target} belongs to cluster {target.cluster!r}; this mesh is {caller.cluster!r}"
            )
        if target.uri == caller.uri or target.uri == self._state_node.identity.uri:
            raise InvalidArgument(f"refusing to revoke {target}: it would lock out this node")
        reason = request.reason or "revoked by an operator"
        await self._state().put(REVOKED_NS, target.uri, reason.encode(), durable=True)
        self._state_node.revoked[target.uri] = reason
        return agent_pb2.RevokeResponse()


def _acks_needed(options: agent_pb2.WriteOptions, live_peers: int, op: str) -> int:
    """Peers that must apply a write before it is acknowledged."""
    if options.consistency in (agent_pb2.CONSISTENCY_UNSPECIFIED, agent_pb2.CONSISTENCY_LOCAL):
        if options.acks:
            raise InvalidArgument(f"{op}: acks={options.acks} needs consistency PEERS")
        return 0
    if options.consistency == agent_pb2.CONSISTENCY_PEERS:
        if options.acks < 1:
            raise InvalidArgument(f"{op}: consistency PEERS needs acks >= 1 (peers to wait for)")
        return int(options.acks)
    if options.consistency == agent_pb2.CONSISTENCY_MAJORITY:
        return (live_peers + 1) // 2 + 1 - 1  # a majority of live members, this node included
    raise InvalidArgument(f"{op}: unknown consistency {options.consistency}")


class StatePeerApi:
    _state_node: StateNode

    async def Replicate(
        self, request: common_pb2.Envelope, context: Ctx
    ) -> AsyncIterator[common_pb2.Envelope]:
        async for answer in self._state_node.state.receive(request, context):
            yield answer

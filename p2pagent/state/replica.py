"""The replica: one node's copy of the replicated state, and its sync protocol (pure).

Inputs are method calls, outputs are returned values; it never reads a clock (``now`` comes
in), never draws its own randomness (an injected ``random.Random`` picks gossip peers) and
never does I/O. The asyncio driver:

- serves API writes with ``put_lww``/``put_mv``/``delete``/``increment``/``set_add``/
  ``set_remove`` and reads with ``get``/``scan``/``changes_since``;
- calls ``tick(now)`` when ``next_tick_at()`` is due and sends the returned
  :class:`~p2pagent.state.messages.Outgoing` messages (it does not pick peers: the core picks
  them from the live members it was told about, with the injected rng);
- feeds received messages to ``handle(msg, now)``, sends back the replies to the sender, and
  hands ``take_persist()`` batches to the store on a worker thread;
- reports membership with ``on_membership(live, departed)``.

Dots and epochs. A replica writes with origin ``node`` (epoch 0) or ``node/<epoch>``: the
store bumps the epoch whenever the node restarts after an unclean stop, so dots issued before
a crash but never persisted can never be reissued with other content. Old epochs, and nodes
that left or were reaped, are garbage-collected from the context once every live member's
digest shows it has seen all of their dots (see :meth:`Replica.collect_garbage`); their final
counters stay in ``context.retired`` so late messages cannot resurrect what they wrote.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from p2pagent.errors import InvalidArgument, quoted
from p2pagent.membership.timing import anti_entropy_interval
from p2pagent.state.buffer import DeltaBuffer
from p2pagent.state.changelog import ChangeLog
from p2pagent.state.clocks import MAX_COUNTER, Dot, DotContext, HybridClock, ranges_add
from p2pagent.state.codec import (
    decode_delta,
    encode_context,
    encode_delta,
    encode_key_state,
    state_digest,
)
from p2pagent.state.config import StateConfig
from p2pagent.state.crdt import DotMap, KeyState, Kind
from p2pagent.state.messages import (
    Delta,
    DeltaMessage,
    DigestMessage,
    Message,
    OpId,
    Outgoing,
    RetiredMessage,
)
from p2pagent.state.sync import dead_slices, pack_deltas, slice_gap
from p2pagent.state.values import Change, ReadResult, ScanPage, WriteResult, read_key

#: Quiet anti-entropy rounds double the interval at most this many times (2 s -> 16 s).
QUIET_DOUBLINGS = 3


def origin_name(node_id: str, epoch: int) -> str:
    """The dot origin of a node in a given restart epoch."""
    return node_id if epoch == 0 else f"{node_id}/{epoch}"


def parse_origin(origin: str) -> tuple[str, int]:
    node, _, epoch = origin.partition("/")
    return node, int(epoch) if epoch.isdigit() else 0


@dataclass(frozen=True, slots=True)
class PersistBatch:
    """Everything to write to the store since the last batch, already encoded.

    ``keys`` holds ``(namespace, key, encoded KeyState or None when the key is gone)``; the
    context, own counter and HLC are written whole each time (they are small).
    """

    keys: tuple[tuple[str, str, bytes | None], ...]
    context: bytes
    origin_counter: int
    hlc: int
    changes: tuple[tuple[int, str, str, bool], ...]

    @property
    def empty(self) -> bool:
        return not self.keys and not self.changes


class Replica:
    def __init__(
        self,
        node_id: str,
        config: StateConfig | None = None,
        rng: random.Random | None = None,
        *,
        epoch: int = 0,
        state: DotMap | None = None,
        counter: int = 0,
        hlc: int = 0,
        change_seq: int = 0,
        recent_changes: Iterable[tuple[int, str, str]] = (),
    ) -> None:
        self.config = (config or StateConfig()).validate()
        self.node_id = node_id
        self.epoch = epoch
        self.origin = origin_name(node_id, epoch)
        self._rng = rng or random.Random(0)
        self.state = state or DotMap()
        self._counter = max(counter, self.state.context.max(self.origin))
        self.clock = HybridClock(hlc, self.config.max_clock_skew)
        self.changes = ChangeLog(self.config.change_log_size, self.get, change_seq, recent_changes)
        self.buffer = DeltaBuffer(self.config.delta_buffer_ops, self.config.delta_buffer_bytes)
        self._value_limit = self.config.value_limit()
        self._pending: list[Delta] = []
        #: Deltas of other origins received for the first time: forwarded once (rumor
        #: mongering), so a write reaches every replica in O(log N) gossip rounds instead of
        #: waiting for anti-entropy.
        self._forward: list[Delta] = []
        #: The delta of the latest local write (for writes that wait for peers' acks).
        self.last_delta: Delta | None = None
        self._dirty: set[tuple[str, str]] = set()
        self._unsaved: list[Change] = []
        self._sorted: dict[str, list[str]] = {}
        self.live: set[str] = set()
        self.departed: set[str] = set()
        #: peer -> largest contiguous counter per origin its digests showed (merged, monotonic)
        self.acks: dict[str, dict[str, int]] = {}
        self._next_gossip = 0.0
        self._next_anti_entropy = 0.0
        #: Anti-entropy rounds since the last sign of change (a write, a merged delta, a
        #: digest that showed a difference, a new member): each doubles the next interval,
        #: up to ``QUIET_DOUBLINGS`` times, so an idle mesh exchanges few digests.
        self._quiet_rounds = 0

    # ---- reads ------------------------------------------------------------------------------

    def get(self, ns: str, key: str) -> ReadResult:
        return read_key(self.state.key(ns, key))

    def scan(self, ns: str, prefix: str = "", after: str = "", limit: int = 100) -> ScanPage:
        """Keys of ``ns`` starting with ``prefix``, in key order, after ``after``."""
        keys = self._sorted_keys(ns)
        i = (
            bisect.bisect_right(keys, after)
            if after >= prefix
            else bisect.bisect_left(keys, prefix)
        )
        out: list[tuple[str, ReadResult]] = []
        limit = limit or 100
        while i < len(keys) and keys[i].startswith(prefix) and len(out) < limit:
            out.append((keys[i], self.get(ns, keys[i])))
            i += 1
        more = i < len(keys) and keys[i].startswith(prefix)
        return ScanPage(tuple(out), out[-1][0] if more and out else "")

    def _sorted_keys(self, ns: str) -> list[str]:
        # Rebuilt lazily: writes that create or delete keys drop the cached order.
        for reshaped in self.state.reshaped:
            self._sorted.pop(reshaped, None)
        self.state.reshaped.clear()
        keys = self._sorted.get(ns)
        if keys is None:
            keys = self._sorted[ns] = sorted(self.state.entries.get(ns, {}))
        return keys

    def changes_since(
        self, from_seq: int, ns: str, prefix: str = "", limit: int = 1000
    ) -> tuple[list[Change], bool]:
        return self.changes.since(from_seq, ns, prefix, limit)

    def state_digest(self) -> str:
        return state_digest(self.state)

    @property
    def key_count(self) -> int:
        return self.state.key_count()

    # ---- local writes -----------------------------------------------------------------------

    def put_lww(self, ns: str, key: str, value: bytes, now: float) -> WriteResult:
        ks = self._writable(ns, key, Kind.LWW, "put an LWW value")
        self._check_value(ns, key, value)
        removed = list(ks.all_dots()) if ks else []
        return self._commit(ns, key, Kind.LWW, [(self.clock.tick(now), bytes(value))], removed)

    def put_mv(
        self, ns: str, key: str, value: bytes, context: Mapping[str, int] | None = None
    ) -> WriteResult:
        """Writes an MV value replacing the siblings ``context`` covers (None: all seen here);
        siblings written concurrently and not covered stay visible next to it."""
        ks = self._writable(ns, key, Kind.MV, "put an MV value")
        self._check_value(ns, key, value)
        removed: list[Dot] = []
        if ks is not None:
            for kind, dots in ks.groups():
                for dot in dots:
                    if context is None or kind is not Kind.MV or dot[1] <= context.get(dot[0], 0):
                        removed.append(dot)
        return self._commit(ns, key, Kind.MV, [bytes(value)], removed)

    def delete(self, ns: str, key: str) -> WriteResult:
        """Removes every value of the key seen here; a concurrent write elsewhere survives."""
        self._check_key(ns, key)
        ks = self.state.key(ns, key)
        if ks is None:
            return WriteResult(ns, key, {}, 0)
        return self._commit(ns, key, Kind.LWW, [], list(ks.all_dots()))

    def increment(self, ns: str, key: str, delta: int) -> WriteResult:
        ks = self._writable(ns, key, Kind.COUNTER, "increment")
        if not isinstance(delta, int) or isinstance(delta, bool):
            raise InvalidArgument(f"increment of {ns}/{key} needs an integer delta")
        p = n = 0
        removed: list[Dot] = []
        if ks is not None:
            for kind, dots in ks.groups():
                for dot, payload in dots.items():
                    if kind is not Kind.COUNTER:
                        removed.append(dot)
                    elif dot[0] == self.origin:
                        # Our own contribution is one cumulative (p, n): replace it.
                        p, n = p + payload[0], n + payload[1]
                        removed.append(dot)
        p, n = p + max(delta, 0), n + max(-delta, 0)
        if p > MAX_COUNTER or n > MAX_COUNTER:
            raise InvalidArgument(f"counter {ns}/{key} would overflow 64 bits")
        return self._commit(ns, key, Kind.COUNTER, [(p, n)], removed)

    def set_add(self, ns: str, key: str, elements: Iterable[bytes]) -> WriteResult:
        ks = self._writable(ns, key, Kind.SET, "add set elements")
        elems = self._elements(ns, key, elements)
        removed: list[Dot] = []
        if ks is not None:
            for kind, dots in ks.groups():
                removed += (d for d, e in dots.items() if kind is not Kind.SET or e in elems)
        return self._commit(ns, key, Kind.SET, sorted(elems), removed)

    def set_remove(self, ns: str, key: str, elements: Iterable[bytes]) -> WriteResult:
        """Removes the elements as seen here (add-wins: a concurrent add survives)."""
        ks = self._writable(ns, key, Kind.SET, "remove set elements")
        elems = self._elements(ns, key, elements)
        if ks is None:
            return WriteResult(ns, key, {}, 0)
        removed = [d for d, e in ks.dots_of(Kind.SET).items() if e in elems]
        if not removed:
            return WriteResult(ns, key, read_key(ks).version, 0)
        return self._commit(ns, key, Kind.SET, [], removed)

    def _check_key(self, ns: str, key: str) -> None:
        limit = self.config.max_key_bytes
        if not isinstance(ns, str) or not isinstance(key, str):
            raise InvalidArgument("namespace and key must be strings")
        if not key:
            raise InvalidArgument(f"empty key in namespace {quoted(ns)}: name the key")
        if len(ns.encode()) > limit or len(key.encode()) > limit:
            raise InvalidArgument(
                f"namespace or key {ns[:64]!r}/{key[:64]!r} is longer than {limit} bytes"
            )

    def _writable(self, ns: str, key: str, kind: Kind, what: str) -> KeyState | None:
        self._check_key(ns, key)
        ks = self.state.key(ns, key)
        if ks is not None and (current := ks.visible_kind()) is not kind:
            raise InvalidArgument(
                f"cannot {what} at {ns}/{key}: it holds a {current.name} value, not "
                f"{kind.name}; delete the key first to change its type"
            )
        return ks

    def _check_value(self, ns: str, key: str, value: Any) -> None:
        if not isinstance(value, bytes | bytearray):
            raise InvalidArgument(f"value for {ns}/{key} must be bytes")
        if len(value) > self._value_limit:
            raise InvalidArgument(
                f"value for {ns}/{key} is {len(value)} bytes, over the limit of "
                f"{self._value_limit} (state.max_value_bytes); store it as a model or split it"
            )

    def _elements(self, ns: str, key: str, elements: Iterable[bytes]) -> set[bytes]:
        elems = set()
        for e in elements:
            self._check_value(ns, key, e)
            elems.add(bytes(e))
        if not elems:
            raise InvalidArgument(f"no set elements given for {ns}/{key}")
        if len(elems) > self.config.max_set_elements_per_op:
            raise InvalidArgument(
                f"{len(elems)} elements for {ns}/{key}: at most "
                f"{self.config.max_set_elements_per_op} per call (state.max_set_elements_per_op)"
            )
        return elems

    def _commit(
        self, ns: str, key: str, kind: Kind, payloads: list[Any], removed: list[Dot]
    ) -> WriteResult:
        """Issues fresh dots for one operation, applies it here and records its delta."""
        first = self._counter + 1
        last = self._counter + max(len(payloads), 1)  # a pure removal still takes one dot
        self._counter = last
        delta = DotMap()
        for i, payload in enumerate(payloads):
            delta.add_dot(ns, key, kind, (self.origin, first + i), payload)
        dctx = delta.context
        for origin, counter in removed:
            dctx.add(origin, counter)
        dctx.add_range(self.origin, first, last)
        self.state.merge(delta)
        self.last_delta = Delta(delta, OpId(self.origin, first, last))
        self._record(self.last_delta, local=True)
        change = self._changed(ns, key)
        return WriteResult(ns, key, change.value.version, change.seq)

    def _record(self, delta: Delta, local: bool) -> None:
        self._quiet_rounds = 0
        if delta.op is not None:
            self.buffer.add(delta.op, encode_delta(delta))
        if local:
            self._pending.append(delta)
        elif delta.op is not None and self.config.forward_deltas:
            self._forward.append(delta)

    def _changed(self, ns: str, key: str) -> Change:
        self._dirty.add((ns, key))
        change = self.changes.append(ns, key, self.get(ns, key))
        self._unsaved.append(change)
        return change

    # ---- sync ---------------------------------------------------------------------------------

    def on_membership(self, live: Iterable[str], departed: Iterable[str] = ()) -> None:
        """The live members (self excluded or not) and those that left or were reaped."""
        live = set(live) - {self.node_id}
        if live - self.live:
            self._quiet_rounds = 0  # a newcomer may lack everything: exchange soon
        self.live = live
        self.departed = (self.departed | set(departed)) - self.live - {self.node_id}
        for peer in list(self.acks):
            if peer not in self.live:
                del self.acks[peer]

    def next_tick_at(self) -> float:
        """When :meth:`tick` has work. With deltas waiting and no push in the last gossip
        interval this is already due: an idle replica pushes a write at once, a busy one
        batches its writes once per interval."""
        if self._pending or self._forward:
            return min(self._next_gossip, self._next_anti_entropy)
        return self._next_anti_entropy

    def tick(self, now: float) -> list[Outgoing]:
        """Pushes pending deltas and starts anti-entropy when their intervals are due."""
        out: list[Outgoing] = []
        if now >= self._next_gossip and (self._pending or self._forward):
            out += self.take_gossip(now)
            self._next_gossip = now + self.config.gossip_interval
        if now >= self._next_anti_entropy:
            out += self.start_anti_entropy(now)
            self.collect_garbage()
            self._next_anti_entropy = now + self.anti_entropy_interval()
            self._quiet_rounds += 1
        return out

    def anti_entropy_interval(self) -> float:
        """``anti_entropy_interval``, stretched past 32 members as memberlist stretches its
        push-pull (``membership.timing.anti_entropy_interval``): digests one member sends and
        answers per second stay flat as the mesh grows. Doubled for each quiet round since
        the last change (up to ``2 ** QUIET_DOUBLINGS`` times): digests between replicas that
        agree find nothing, and any change brings the base interval back."""
        base = anti_entropy_interval(self.config.anti_entropy_interval, len(self.live) + 1)
        return base * float(2 ** min(self._quiet_rounds, QUIET_DOUBLINGS))

    def take_gossip(self, now: float) -> list[Outgoing]:
        """The pending local deltas and those to forward, each batch for ``gossip_fanout``
        random live peers."""
        if not self._pending and not self._forward:
            return []
        fanout = min(self.push_fanout(), len(self.live))
        out: list[Outgoing] = []
        for batch in (self._pending, self._forward):
            if not batch:
                continue
            messages = pack_deltas(batch, self.node_id, self.config.max_message_bytes)
            peers = self._rng.sample(sorted(self.live), fanout)
            out += (Outgoing(p, m) for p in peers for m in messages)
        self._pending, self._forward = [], []
        return out

    def push_fanout(self) -> int:
        """Peers each batch of deltas goes to: ``gossip_fanout``, raised like memberlist's
        retransmit limit (``retransmit_mult * log10(N + 1)``) so that with every receiver
        forwarding once, the chance a replica hears of a write only through anti-entropy
        stays under about 1% as the mesh grows."""
        members = len(self.live) + 1
        scaled = math.ceil(self.config.retransmit_mult * math.log10(members + 1))
        return max(self.config.gossip_fanout, scaled)

    def start_anti_entropy(self, now: float) -> list[Outgoing]:
        if not self.live:
            return []
        return [Outgoing(self._rng.choice(sorted(self.live)), self.digest())]

    def digest(self, reply: bool = True) -> DigestMessage:
        ctx = self.state.context
        ranges = {o: tuple(ctx.ranges(o)) for o in ctx.origins()}
        live = dict(self.state.summary)
        return DigestMessage(self.node_id, ranges, live, self._retired_hash(), reply)

    def _retired_hash(self) -> bytes:
        retired = self.state.context.retired
        if not retired:
            return b""
        return hashlib.sha256(repr(sorted(retired.items())).encode()).digest()[:8]

    def answer_digest(self, digest: DigestMessage) -> list[Message]:
        """What the digest's sender lacks, in messages under ``max_message_bytes``; plus our
        own digest when it has dots we lack, and our retired origins when they differ."""
        theirs = DotContext()
        for origin, ranges in digest.context.items():
            theirs.set_ranges(origin, list(ranges))
        self._record_ack(digest.sender, theirs)
        mine = self.state.context
        if digest.retired_hash == self._retired_hash():
            # Same retired origins: digests leave them out, and neither side lacks them.
            theirs.retired = dict(mine.retired)
        buffered: list[Delta] = []
        fallback = {}
        gap_to = mine.missing_from(theirs)
        for origin, gap in gap_to.items():
            covered = self.buffer.cover(origin, gap)
            if covered is None:
                fallback[origin] = gap
            else:
                buffered += (decode_delta(data) for data in covered)
        # Where both have seen the same dots of an origin but hold different live ones, one of
        # us missed a removal (its delta was lost, while a later delta named the dot): send
        # our dead dots of that origin, and ask for theirs.
        gap_from = theirs.missing_from(mine)
        summary = self.state.summary
        disagree = {
            o: self._known_ranges(o)
            for o in summary.keys() | digest.live.keys()
            if o not in gap_to and o not in gap_from and summary.get(o, 0) != digest.live.get(o, 0)
        }
        limit = self.config.max_message_bytes
        out: list[Message] = []
        out += pack_deltas(buffered, self.node_id, limit)
        out += slice_gap(self.state, fallback, self.node_id, limit)
        out += dead_slices(self.state, disagree, self.node_id, limit)
        if digest.reply and (gap_from or disagree):
            out.append(self.digest(reply=False))
        if digest.retired_hash != self._retired_hash() and mine.retired:
            out.append(RetiredMessage(self.node_id, dict(mine.retired)))
        if out:
            self._quiet_rounds = 0  # we differ: keep exchanging at the base interval
        return out

    def _known_ranges(self, origin: str) -> list[tuple[int, int]]:
        ctx = self.state.context
        ranges = ctx.ranges(origin)
        if origin in ctx.retired:
            ranges = ranges_add(ranges, 1, ctx.retired[origin])
        return ranges

    def _record_ack(self, peer: str, ctx: DotContext) -> None:
        if peer not in self.live:
            return
        acks = self.acks.setdefault(peer, {})
        for origin in ctx.origins():
            base = ctx.base(origin)
            if base > acks.get(origin, 0):
                acks[origin] = base

    def handle(self, msg: Message, now: float) -> tuple[list[Change], list[Message]]:
        """Dispatches a received message: (changes applied, replies for the sender)."""
        if isinstance(msg, DigestMessage):
            return [], self.answer_digest(msg)
        return self.apply(msg, now), []

    def apply(self, msg: Message, now: float) -> list[Change]:
        """Merges a received (already decoded and validated) message; returns the changes."""
        if isinstance(msg, RetiredMessage):
            self._adopt_retired(msg.retired)
            return []
        if not isinstance(msg, DeltaMessage):
            return []
        changed: set[tuple[str, str]] = set()
        for delta in msg.deltas:
            op = delta.op
            ctx = self.state.context
            if op is not None and (
                ctx.contains(op.origin, op.first)
                if op.first == op.last
                else all(ctx.contains(op.origin, c) for c in range(op.first, op.last + 1))
            ):
                continue  # a duplicate: merging again would change nothing
            keys, max_ts = self.state.merge(delta.state)
            changed |= keys
            if max_ts:
                self.clock.observe(max_ts, now)
            if op is not None:
                self._record(delta, local=False)
        if self._counter < self.state.context.max(self.origin):
            # Peers hold dots of ours we forgot (cannot happen with epochs; kept as a guard).
            self._counter = self.state.context.max(self.origin)
        return [self._changed(ns, key) for ns, key in sorted(changed)]

    # ---- garbage collection -----------------------------------------------------------------

    def collect_garbage(self) -> list[str]:
        """Retires origins of departed nodes and old epochs once every live member has seen all
        of their dots, and drops buffered deltas every live member has; returns the retired."""
        if any(peer not in self.acks for peer in self.live):
            return []  # someone's view is unknown: keep everything
        ctx = self.state.context
        latest: dict[str, int] = {}
        for origin in [*ctx.origins(), *ctx.retired, self.origin]:
            node, epoch = parse_origin(origin)
            latest[node] = max(latest.get(node, 0), epoch)
        retired: list[str] = []
        for origin in list(ctx.origins()):
            node, epoch = parse_origin(origin)
            gone = node in self.departed or epoch < latest[node]
            if origin == self.origin or not gone or not ctx.is_contiguous(origin):
                continue
            final = ctx.base(origin)
            if all(self.acks[p].get(origin, 0) >= final for p in self.live):
                ctx.retire(origin)
                retired.append(origin)
        ctx.forget_retired(self.config.retired_max)
        if self.live:
            acked = {o: min(self.acks[p].get(o, 0) for p in self.live) for o in ctx.origins()}
            self.buffer.drop_acknowledged(acked)
        return retired

    def _adopt_retired(self, retired: Mapping[str, int]) -> None:
        # Safe only for origins whose every dot up to the final counter we have seen: then
        # nothing we are still owed can be filtered out by the retirement.
        ctx = self.state.context
        for origin, final in retired.items():
            if origin in ctx.retired or origin == self.origin:
                continue
            if ctx.is_contiguous(origin) and ctx.base(origin) == final and final > 0:
                ctx.retire(origin)

    # ---- persistence ------------------------------------------------------------------------

    def take_persist(self) -> PersistBatch:
        """The encoded changes since the last call, for ``StateStore.save`` (any thread)."""
        keys = []
        for ns, key in sorted(self._dirty):
            ks = self.state.key(ns, key)
            keys.append((ns, key, None if ks is None else encode_key_state(ks)))
        changes = tuple((c.seq, c.namespace, c.key, c.deleted) for c in self._unsaved)
        self._dirty.clear()
        self._unsaved.clear()
        return PersistBatch(
            tuple(keys),
            encode_context(self.state.context),
            self._counter,
            self.clock.last,
            changes,
        )

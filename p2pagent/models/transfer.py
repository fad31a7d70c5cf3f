"""Multi-source pull planner (pure): which chunk to ask of which holder, and what to do when
chunks arrive, turn out corrupt, or a holder goes away.

The driver's loop around a ``PullPlan``::

    plan = PullPlan(manifest, store.present(mid), rng, config)
    plan.add_holder(node, chunks)             # complete holders: chunks=None; partial: a set
    loop:
        for req in plan.next_requests(now):   # send FetchChunks(mid, req.indices) to req.node
        on each Chunk:      plan.on_chunk(node, index, ok=store.write_chunk(...), now)
        stream ended short: plan.on_missing(node, undelivered, now)
        call failed:        plan.on_holder_failed(node, now)
        wake up at plan.next_deadline() at the latest; stop when plan.is_complete
        (or plan.is_stalled: no usable holder has what is missing; wait for holdings news)

How load is spread (BitTorrent's lessons, Kraken's and Dragonfly's goals):

- Rarest first: missing chunks are taken in order of how few usable holders have them, ties
  broken by a per-pull random key. Pullers of one publisher thus start on different chunks,
  advertise them (partial holdings, see ``bitmap``) and serve each other, instead of all
  queueing on the publisher.
- Shares among fellow pullers: random keys alone still let two pullers ask the publisher for
  the same chunk while neither has advertised it yet (advertisements lag by about a second,
  and a capped publisher's queue is deep), so the publisher would upload much of the model
  twice. So every chunk has an owner among the pullers that know each other (this node and
  the partial holders; rendezvous hashing of node name and chunk index, the same on every
  node; a fellow counts while its holdings grew within ``fellow_wait_s``): a complete
  holder is asked only for chunks this node owns that no fellow has yet;
  the rest come from the fellows. Only when nothing at all has been in flight for
  ``fellow_wait_s`` is a complete holder asked for a batch of the fellows' share (a fellow
  that is slow does not hold the pull up; one that is gone is no fellow any more).
- Per-holder pipeline: at most ``pipeline_depth`` chunks outstanding per holder, asked for in
  FetchChunks calls of ``batch_chunks``; a new call goes out once a whole batch of slots is
  free (or the holder is idle). A global cap bounds the memory one pull pins.
- Progress-based timeouts: a holder counts as failed only when it delivers nothing for
  ``stall_timeout_s`` while owing chunks, never because a big file takes long.
- Failure handling: a holder that fails (connection loss, stall, error) gets its outstanding
  chunks back in the pending pool and is retried after an exponential back-off; after
  ``max_holder_failures`` in a row it is given up for this pull. A holder that sends a chunk
  failing verification is banned for this pull at once: corrupt data is never an accident
  worth retrying.
- Endgame: once every missing chunk is in flight, idle holders are also asked for them (up to
  ``endgame_copies`` in flight per chunk), so one slow holder does not set the finish time.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from p2pagent.errors import InvalidArgument
from p2pagent.models.chunk_owner import owned_by
from p2pagent.models.config import ModelsConfig
from p2pagent.models.manifest import Manifest


class ChunkResult(Enum):
    """What an arriving chunk meant for the pull."""

    #: New and verified: now held.
    ACCEPTED = "accepted"
    #: Verified but already held (an endgame copy or a late arrival); dropped.
    DUPLICATE = "duplicate"
    #: Failed verification (or an index the manifest does not have); the sender is banned.
    CORRUPT = "corrupt"


class HolderState(Enum):
    ACTIVE = "active"
    #: Failed recently; not asked again before its back-off ends.
    BACKOFF = "backoff"
    #: Not asked again during this pull (sent corrupt data, or failed too often).
    BANNED = "banned"


@dataclass(frozen=True)
class Request:
    """One FetchChunks call to make: ask ``node`` for ``indices``, in this order."""

    node: str
    indices: tuple[int, ...]


@dataclass(frozen=True)
class Progress:
    total_chunks: int
    have_chunks: int
    inflight_chunks: int
    total_bytes: int
    have_bytes: int
    #: Chunks that failed verification, duplicates dropped, holder failures (incl. stalls).
    corrupt: int
    duplicates: int
    holder_failures: int
    #: New chunks accepted from each holder during this pull.
    received_from: Mapping[str, int]


@dataclass
class _Holder:
    chunks: set[int]
    #: index -> time the request for it was sent.
    inflight: dict[int, float] = field(default_factory=dict)
    failures: int = 0
    #: End of the current back-off; 0 when none.
    retry_at: float = 0.0
    #: Why this holder is not asked any more during this pull; None while usable.
    banned: str | None = None
    #: Last time this holder delivered something (or was handed work while idle).
    last_progress: float = 0.0
    received: int = 0
    #: A node pulling the version itself (holds ``chunks`` so far); False for a complete one.
    partial: bool = False
    #: When its advertised holdings last grew (or it appeared): a fellow puller counts for
    #: sharing only while it makes progress.
    grew_at: float = 0.0


class PullPlan:
    """Plans the pull of one model version from any number of (partial) holders."""

    def __init__(
        self,
        manifest: Manifest,
        have: Iterable[int],
        rng: random.Random,
        config: ModelsConfig | None = None,
        name: str = "",
    ) -> None:
        """``name``: this node's, for sharing the work with fellow pullers."""
        self.manifest = manifest
        self._name = name
        self._cfg = config or ModelsConfig()
        self._rng = rng
        self._n = manifest.chunk_count
        self._have: set[int] = self._checked(have, "held chunk")
        self._have_bytes = sum(manifest.chunk_length(i) for i in self._have)
        self._inflight: dict[int, set[str]] = {}
        self._holders: dict[str, _Holder] = {}
        self._avail = [0] * self._n
        # Random tie-break among equally rare chunks: the reason pullers diverge.
        self._key = [rng.random() for _ in range(self._n)]
        self._order: list[int] | None = None
        self._order_have = 0
        # Chunks before this position in _order are all held: scans start here.
        self._order_start = 0
        # Per holder, the position in _order before which nothing is pickable from it (held,
        # in flight, or not among its chunks). Reset when a chunk becomes pending again or
        # the order is rebuilt. Keeps partial holders from rescanning the order every call.
        self._cursors: dict[str, int] = {}
        #: Per chunk, whether this node fetches it from complete holders (see module docs),
        #: and the chunks some usable fellow puller has; both rebuilt with the order.
        self._mine: list[bool] = [True] * self._n
        self._at_fellow: set[int] = set()
        self._fellows = False
        #: The fellows ``_mine`` was computed for.
        self._shared_among: tuple[str, ...] = ()
        #: Since when nothing is in flight while fellows still owe chunks; None otherwise.
        self._waiting_since: float | None = None
        self._corrupt = 0
        self._duplicates = 0
        self._failures = 0
        #: The last planning turn used up ``max_inflight_chunks`` or was in the endgame: any
        #: freed slot may be used (see ``may_ask``).
        self._every_slot = False

    def _checked(self, indices: Iterable[int], what: str) -> set[int]:
        out = set(indices)
        bad = [i for i in out if not 0 <= i < self._n]
        if bad:
            raise InvalidArgument(
                f"{what} index {min(bad)} out of range: the model has {self._n} chunks"
            )
        return out

    # ---- holders ---------------------------------------------------------------------------

    def add_holder(self, node: str, chunks: Iterable[int] | None = None, now: float = 0.0) -> None:
        """Adds a holder or replaces what it holds (``None``: every chunk).

        Call again whenever a partial holder advertises more. A banned holder stays banned.
        """
        held = set(range(self._n)) if chunks is None else self._checked(chunks, "advertised")
        h = self._holders.get(node)
        if h is None:
            h = self._holders[node] = _Holder(chunks=set(), grew_at=now)
        elif held - h.chunks:
            h.grew_at = now
        if h.partial != (chunks is not None):
            h.partial = chunks is not None
            self._order = None
        if h.banned is None:
            for i in held - h.chunks:
                self._avail[i] += 1
            for i in h.chunks - held:
                self._avail[i] -= 1
            if held != h.chunks:
                self._order = None
        h.chunks = held

    def remove_holder(self, node: str) -> None:
        """The node left the cluster (or dropped the version): forget it."""
        h = self._holders.pop(node, None)
        if h is None:
            return
        self._release(node, h, h.inflight)
        if h.banned is None:
            for i in h.chunks:
                self._avail[i] -= 1
            self._order = None

    def holder_state(self, node: str, now: float) -> HolderState | None:
        h = self._holders.get(node)
        if h is None:
            return None
        if h.banned is not None:
            return HolderState.BANNED
        return HolderState.BACKOFF if h.retry_at > now else HolderState.ACTIVE

    @property
    def banned(self) -> dict[str, str]:
        """Holders not used any more in this pull, with the reason."""
        return {n: h.banned for n, h in self._holders.items() if h.banned is not None}

    # ---- events ----------------------------------------------------------------------------

    def on_chunk(self, node: str, index: int, ok: bool, now: float) -> ChunkResult:
        """A chunk arrived from ``node``; ``ok`` says whether it verified against the manifest."""
        h = self._holders.get(node)
        valid = ok and 0 <= index < self._n
        if valid and index not in self._have:
            # Held before released: the chunk never looks pending in between.
            self._have.add(index)
            self._have_bytes += self.manifest.chunk_length(index)
            result = ChunkResult.ACCEPTED
        else:
            result = ChunkResult.DUPLICATE if valid else ChunkResult.CORRUPT
        if h is not None:
            self._release(node, h, [index])
        if result is ChunkResult.CORRUPT:
            self._corrupt += 1
            if h is not None:
                self._ban(node, h, "sent a chunk that failed verification")
            return ChunkResult.CORRUPT
        if h is not None:
            h.last_progress = now
            h.failures = 0
            h.retry_at = 0.0
        if result is ChunkResult.DUPLICATE:
            self._duplicates += 1
        elif h is not None:
            h.received += 1
        return result

    def on_missing(self, node: str, indices: Iterable[int], now: float) -> None:
        """``node`` answered but lacked ``indices`` (stream ended early, NotFound, deleted)."""
        h = self._holders.get(node)
        if h is None:
            return
        gone = self._checked(indices, "missing chunk")
        self._release(node, h, gone)
        h.last_progress = now
        if h.banned is None:
            for i in gone & h.chunks:
                self._avail[i] -= 1
            self._order = None
        h.chunks -= gone

    def on_holder_failed(self, node: str, now: float) -> None:
        """The call to ``node`` failed (connection lost, error): re-queue what it owed.

        A holder that owed nothing (it had delivered everything asked) is not held to it.
        """
        h = self._holders.get(node)
        if h is not None and h.banned is None and h.inflight:
            self._fail(node, h, now)

    def verify(self, index: int, data: bytes) -> bool:
        return self.manifest.verify_chunk(index, data)

    # ---- planning --------------------------------------------------------------------------

    def next_requests(self, now: float) -> list[Request]:
        """FetchChunks calls to make now (also expires stalled holders)."""
        self._expire(now)
        if self.is_complete:
            return []
        cfg = self._cfg
        budget = cfg.max_inflight_chunks - sum(len(h.inflight) for h in self._holders.values())
        usable: list[tuple[float, str, _Holder]] = []
        for node in sorted(self._holders):
            h = self._holders[node]
            if h.retry_at and h.retry_at <= now:
                h.retry_at = 0.0
            if h.banned is None and not h.retry_at and len(h.inflight) < cfg.pipeline_depth:
                usable.append((len(h.inflight) + self._rng.random(), node, h))
        usable.sort()  # least busy first, ties at random
        assigned: dict[str, list[int]] = {}
        batches: list[tuple[str, list[int]]] = []
        fellows = self._active_fellows(now)
        if fellows != self._shared_among:
            self._order = None  # a fellow came, went or stalled: share again
        order = self._rarest_first(fellows)
        pending = self._n - len(self._have) - sum(1 for i in self._inflight if i not in self._have)
        taken: set[int] = set()
        progressed = True
        # Rounds of one batch per holder, so the rarest chunks are shared out across holders
        # rather than all handed to whichever comes first.
        while progressed and budget > 0 and len(taken) < pending:
            progressed = False
            for _, node, h in usable:
                mine = assigned.setdefault(node, [])
                free = cfg.pipeline_depth - len(h.inflight) - len(mine)
                if free < min(cfg.batch_chunks, cfg.pipeline_depth) and (h.inflight or mine):
                    continue  # wait for a whole batch of slots: fewer, fuller calls
                want = min(cfg.batch_chunks, free, budget)
                picks = self._pick(node, h, order, taken, want)
                if picks:
                    batches.append((node, picks))
                    mine.extend(picks)
                    taken.update(picks)
                    budget -= len(picks)
                    progressed = True
                if budget <= 0:
                    break
        waiting = (
            self._fellows
            and not batches
            and not self._inflight
            and len(taken) < pending
            and any(not h.partial for _, _, h in usable)  # someone to fall back to
        )
        if not waiting:
            self._waiting_since = None
        elif self._waiting_since is None:
            self._waiting_since = now
        if waiting and budget > 0 and now - (self._waiting_since or now) >= cfg.fellow_wait_s:
            # Waited for fellows with nothing in flight anywhere: one batch of their share
            # from a complete holder, so a slow fellow does not stall this pull.
            self._waiting_since = None
            for _, node, h in usable:
                want = min(cfg.batch_chunks, cfg.pipeline_depth - len(h.inflight), budget)
                picks = self._pick(node, h, order, taken, want, relaxed=True)
                if picks:
                    batches.append((node, picks))
                    taken.update(picks)
                    budget -= len(picks)
                    break
        endgame = len(taken) == pending and cfg.endgame_copies > 1
        self._every_slot = endgame or budget <= 0
        if endgame:
            self._endgame(usable, assigned, batches, budget)
        requests = []
        for node, indices in batches:
            h = self._holders[node]
            if not h.inflight:
                h.last_progress = now  # the stall clock starts when an idle holder gets work
            for i in indices:
                h.inflight[i] = now
                self._inflight.setdefault(i, set()).add(node)
            requests.append(Request(node, tuple(indices)))
        return requests

    def _pick(
        self,
        node: str,
        h: _Holder,
        order: list[int],
        taken: set[int],
        want: int,
        relaxed: bool = False,
    ) -> list[int]:
        """The first ``want`` pending chunks in rarest-first order that ``h`` holds (from a
        complete holder, while fellows pull too: this node's share, unless ``relaxed``)."""
        picks: list[int] = []
        if want <= 0:
            return picks
        have, inflight = self._have, self._inflight
        if self._fellows and not h.partial and not relaxed:
            mine, at_fellow = self._mine, self._at_fellow
            # No cursor: chunks skipped here are pickable from h later (relaxed).
            for i in order[self._order_start :]:
                if len(picks) >= want:
                    break
                if i in have or i in inflight or i in taken or i not in h.chunks:
                    continue
                if mine[i] and i not in at_fellow:
                    picks.append(i)
            return picks
        pos = max(self._order_start, self._cursors.get(node, 0))
        # Everything scanned is either picked now or not pickable from h until a release
        # or a rebuild (which reset the cursor); ``taken`` ones go in flight this call.
        while pos < len(order) and len(picks) < want:
            i = order[pos]
            pos += 1
            if i not in have and i not in inflight and i not in taken and i in h.chunks:
                picks.append(i)
        self._cursors[node] = pos
        return picks

    def _endgame(
        self,
        usable: list[tuple[float, str, _Holder]],
        assigned: dict[str, list[int]],
        batches: list[tuple[str, list[int]]],
        budget: int,
    ) -> None:
        """Duplicates in-flight chunks to holders with free slots (adds to ``batches``)."""
        copies = {i: len(nodes) for i, nodes in self._inflight.items() if i not in self._have}
        for nodes in assigned.values():
            for i in nodes:
                copies[i] = copies.get(i, 0) + 1
        for _, node, h in usable:
            if self._fellows and not h.partial:
                continue  # a complete holder is the swarm's bottleneck: no copies from it
            mine = assigned.setdefault(node, [])
            free = self._cfg.pipeline_depth - len(h.inflight) - len(mine)
            extra: list[int] = []
            # Fewest copies first, then rarest-first order's random key.
            for i in sorted(copies, key=lambda i: (copies[i], self._key[i])):
                if free <= 0 or budget <= 0:
                    break
                if (
                    copies[i] < self._cfg.endgame_copies
                    and i in h.chunks
                    and i not in h.inflight
                    and i not in mine
                ):
                    extra.append(i)
                    copies[i] += 1
                    free -= 1
                    budget -= 1
            mine.extend(extra)
            step = self._cfg.batch_chunks
            batches.extend((node, extra[k : k + step]) for k in range(0, len(extra), step))

    def _rarest_first(self, fellows: tuple[str, ...]) -> list[int]:
        """Missing chunks, rarest first (held ones skipped by the scans).

        Re-sorted only when availability changes or half the list is held, never per call:
        a pull of 10,000 chunks makes about as many calls.
        """
        stale = len(self._have) - self._order_have
        if self._order is None or stale > len(self._order) // 2:
            missing = [i for i in range(self._n) if i not in self._have]
            self._share(missing, fellows)
            mine = self._mine
            self._order = sorted(missing, key=lambda i: (self._avail[i], not mine[i], self._key[i]))
            self._order_have = len(self._have)
            self._order_start = 0
            self._cursors.clear()
        # Chunks are mostly taken in this order, so the held ones gather at the front.
        order, start = self._order, self._order_start
        while start < len(order) and order[start] in self._have:
            start += 1
        self._order_start = start
        return order

    def _active_fellows(self, now: float) -> tuple[str, ...]:
        """Partial holders that advertised new chunks within ``fellow_wait_s``, by name."""
        wait = self._cfg.fellow_wait_s
        return tuple(
            sorted(
                n
                for n, h in self._holders.items()
                if h.partial and h.banned is None and now - h.grew_at < wait
            )
        )

    def _share(self, missing: list[int], fellows: tuple[str, ...]) -> None:
        """Which of ``missing`` this node fetches from complete holders (see module docs)."""
        self._fellows = bool(fellows)
        self._at_fellow = set()
        for h in self._holders.values():
            if h.partial and h.banned is None:
                self._at_fellow |= h.chunks
        if fellows == self._shared_among:
            return  # holdings changed, not who pulls: the shares stand
        self._shared_among = fellows
        if not fellows:
            self._mine = [True] * self._n
            return
        self._mine = owned_by(self._name, fellows, missing, self._n)

    # ---- timers ----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When ``next_requests`` should run next at the latest (a stall or back-off ends)."""
        times = []
        for h in self._holders.values():
            if h.banned is not None:
                continue
            if h.inflight:
                times.append(h.last_progress + self._cfg.stall_timeout_s)
            if h.retry_at:
                times.append(h.retry_at)
        if self._waiting_since is not None:
            times.append(self._waiting_since + self._cfg.fellow_wait_s)
        if any(not h.partial and h.banned is None for h in self._holders.values()):
            for n in self._shared_among:  # a fellow that stops growing stops counting
                if n in self._holders:
                    times.append(self._holders[n].grew_at + self._cfg.fellow_wait_s)
        return min(times, default=None)

    def _expire(self, now: float) -> None:
        for node, h in list(self._holders.items()):
            stalled = now - h.last_progress >= self._cfg.stall_timeout_s
            if h.banned is None and h.inflight and stalled:
                self._fail(node, h, now)

    # ---- internals -------------------------------------------------------------------------

    def _release(self, node: str, h: _Holder, indices: Iterable[int]) -> None:
        """Takes ``indices`` off ``node``'s outstanding list; they become pending again."""
        for i in list(indices):
            if h.inflight.pop(i, None) is None:
                continue
            nodes = self._inflight.get(i)
            if nodes is not None:
                nodes.discard(node)
                if not nodes:
                    del self._inflight[i]
            if i not in self._have and i not in self._inflight:
                self._cursors.clear()  # pending again: scans must look behind the cursors

    def _fail(self, node: str, h: _Holder, now: float) -> None:
        self._release(node, h, h.inflight)
        self._failures += 1
        h.failures += 1
        if h.failures >= self._cfg.max_holder_failures:
            self._ban(node, h, f"failed {h.failures} times in a row")
        else:
            h.retry_at = now + backoff_delay(h.failures, self._cfg)

    def _ban(self, node: str, h: _Holder, reason: str) -> None:
        self._release(node, h, h.inflight)
        if h.banned is None:
            for i in h.chunks:
                self._avail[i] -= 1
            self._order = None
            h.banned = reason

    # ---- state -----------------------------------------------------------------------------

    @property
    def is_complete(self) -> bool:
        return len(self._have) == self._n

    @property
    def is_stalled(self) -> bool:
        """Nothing in flight and no usable holder (even one backing off) has a missing chunk.

        The driver should then wait for news (new holders, new holdings) or give up.
        """
        if self.is_complete or self._inflight:
            return False
        return not any(h.banned is None and (h.chunks - self._have) for h in self._holders.values())

    def may_ask(self, node: str) -> bool:
        """Whether a planning turn could send a call now that a chunk from ``node`` landed:
        ``node`` has room for a whole batch (or nothing in flight: ``next_requests`` waits for
        one or the other), or the last turn used up the pull's in-flight budget or was in the
        endgame (a freed slot may then be used at once, by any holder). The driver skips the
        other turns, which would send nothing."""
        h = self._holders.get(node)
        if h is None or self._every_slot or not h.inflight:
            return True
        depth = self._cfg.pipeline_depth
        return depth - len(h.inflight) >= min(self._cfg.batch_chunks, depth)

    @property
    def have_count(self) -> int:
        """How many chunks are held now (``len(have)`` without building the set)."""
        return len(self._have)

    @property
    def have(self) -> frozenset[int]:
        """Chunks held now: what this node advertises as its partial holdings."""
        return frozenset(self._have)

    def progress(self) -> Progress:
        return Progress(
            total_chunks=self._n,
            have_chunks=len(self._have),
            inflight_chunks=len(self._inflight),
            total_bytes=self.manifest.size,
            have_bytes=self._have_bytes,
            corrupt=self._corrupt,
            duplicates=self._duplicates,
            holder_failures=self._failures,
            received_from={n: h.received for n, h in self._holders.items() if h.received},
        )


def backoff_delay(failures: int, config: ModelsConfig) -> float:
    """Seconds before retrying a holder after its ``failures``-th failure in a row."""
    return float(
        min(config.holder_backoff_max_s, config.holder_backoff_s * 2 ** max(0, failures - 1))
    )

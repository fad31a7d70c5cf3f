"""The dynamic batching policy: which queued requests form the next batch, and when.

Pure: no clock, no threads, no I/O. The engine calls ``submit`` and ``cancel`` as requests
come and go, ``poll(now)`` whenever something changed or the returned ``wake_at`` is reached,
and ``on_batch_done`` when the device finishes a batch. Rules, in the order ``poll`` applies
them:

1. Deadlines. A queued request whose deadline is at or before ``now`` is dropped and
   returned in ``expired``: no compute is spent on an answer nobody waits for.
2. Idle device => dispatch now. With nothing in flight, whatever is queued goes at once (up
   to ``max_batch_size`` rows). A lone request pays zero added delay; under load, requests
   pile up while the device is busy and the next batch forms from them (Triton's dynamic
   batcher, with the delay spent only where it buys something).
   One exception, the refill window (``refill``): right after a model's batch of N rows
   finished, its callers are likely to send again (a closed loop: agents waiting on each
   answer). Where they have been seen to come back quickly compared with the model's fixed
   cost per batch, a partial batch is held until N rows are queued or a short time has
   passed (at most ``max_queue_delay_s``), so the returning rows share one batch instead of
   paying the fixed cost twice. Light traffic (batches of one) never waits. The fixed cost
   weighed is what a batch costs from dispatch to result as the engine sees it (the hand-off
   to the model worker included, ``stats.batch_cost_s``), and where more callers than a batch
   keep sending, the window holds while rows keep coming, so batches grow with concurrency
   (``refill``'s "growing").
3. Busy device, free pipeline slot (``pipeline_depth`` > 1) => stage the next batch early
   only when it is full: it then runs the moment the device frees up, with its copy to the
   device already done. A partial batch waits for the device (it could not run sooner) and
   takes whatever arrived meanwhile, refill window included.
   Models in the model worker (``submit(worker=True)``: another process, see worker.py) have
   their own pipeline, ``worker_pipeline_depth`` batches, and a batch at least half full is
   handed over while one runs there: it waits in the worker's socket and is taken without
   the worker sleeping and the daemon waking it again. Not a smaller one: each batch pays
   the handover (shared memory, a message, a wake-up) and its forward pass's fixed cost, and
   where the daemon and the worker share a core, splitting the queue into more batches cost
   more CPU per request than the overlap saved (bench/inference_isolation.py, RESULTS.md).
   An idle worker gets a partial batch once it settles (``settling``): where the model's
   requests overlap (several callers) it waits what a batch costs, and where most do (many
   callers) while more keep coming; a lone caller waits at most one turn of the event loop.
4. Only requests of the same model and the same *group* share a batch. The engine's group
   key is the dtypes and non-batch dimensions of the inputs: tensors that cannot be
   concatenated never meet. Within a model the group with the oldest request goes first.
5. Fairness across models by device time: each model is charged the (estimated, then
   measured) seconds its batches use, and the model with the least charge goes next. A model
   that becomes active starts at the smallest charge among active ones, so it neither
   starves the others with banked credit nor waits behind their history. A slow model thus
   gets its share of device time, not all of it.
6. Bounded queue: ``submit`` past ``max_queued`` requests raises ResourceExhausted.
7. Ragged requests (``length`` > 0: token sequences of different lengths, padded per
   batch by the engine, see ``ragged``) are bounded by ``max_batch_tokens`` padded token
   slots as well as by rows, and by ``max_padding_ratio``: the oldest goes first, and later
   ones join it only while the batch stays mostly real tokens (the others wait their turn).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field

from p2pagent.errors import InvalidArgument, ResourceExhausted
from p2pagent.inference import ragged
from p2pagent.inference.config import InferenceConfig
from p2pagent.inference.refill import RefillWindow
from p2pagent.inference.settling import Settling
from p2pagent.inference.stats import ModelCounters, ModelStats


@dataclass(frozen=True)
class Pending:
    """One admitted request, waiting for a batch."""

    request_id: int
    model: str
    group: Hashable
    rows: int
    enqueued_at: float
    deadline: float | None
    #: Sequence length of a ragged request (0: not ragged).
    length: int = 0

    @property
    def tokens(self) -> int:
        """What the request costs in tokens: rows x length, or one per row."""
        return self.rows * self.length if self.length else self.rows


@dataclass(frozen=True)
class Batch:
    """Requests to run together in one forward pass, concatenated in this order."""

    batch_id: int
    model: str
    requests: tuple[Pending, ...]
    rows: int
    formed_at: float

    @property
    def request_ids(self) -> tuple[int, ...]:
        return tuple(r.request_id for r in self.requests)


@dataclass(frozen=True)
class Decision:
    """What ``poll`` decided: batches to run now, requests to fail, when to poll again."""

    batches: tuple[Batch, ...] = ()
    expired: tuple[Pending, ...] = ()
    #: Poll again at this time even if nothing else happens (None: only on events).
    wake_at: float | None = None
    #: Poll again on the event loop's next turn: a worker batch settles for a turn (rule 3).
    repoll: bool = False


@dataclass
class _ModelQueue:
    # Group key -> requests in arrival order. Cancelled or expired ones are skipped lazily.
    groups: dict[Hashable, deque[Pending]] = field(default_factory=dict)
    queued: int = 0
    queued_rows: int = 0
    #: Real tokens queued (rows x length; one per row without sequences).
    queued_tokens: int = 0
    #: Ragged requests queued (rule 7's bounds then need a walk of the line).
    queued_ragged: int = 0
    #: Device seconds charged to this model (fairness), see rule 5.
    used_s: float = 0.0
    counters: ModelCounters = field(default_factory=ModelCounters)
    #: Rule 2's refill window.
    refill: RefillWindow = field(default_factory=RefillWindow)
    #: The model runs in the model worker (rule 3's own pipeline).
    worker: bool = False
    #: Batches of this model in flight.
    flight: int = 0
    #: Rule 3's settling of a worker batch.
    settling: Settling = field(default_factory=Settling)


class BatchPolicy:
    def __init__(self, config: InferenceConfig) -> None:
        self._cfg = config
        self._depth = max(1, config.pipeline_depth)
        self._worker_depth = max(1, config.worker_pipeline_depth)
        # Batches in flight in this process's device workers and in the model worker.
        self._local_flight = 0
        self._worker_flight = 0
        self._live: dict[int, Pending] = {}
        self._models: dict[str, _ModelQueue] = {}
        self._deadlines: list[tuple[float, int]] = []  # heap; stale entries skipped
        # batch id -> (batch, seconds charged at dispatch, in the model worker)
        self._in_flight: dict[int, tuple[Batch, float, bool]] = {}
        self._next_request = 1
        self._next_batch = 1
        # Worker batches held by this poll to settle (rule 3): for a turn (poll again on the
        # next one), or until a time (the earliest, if any).
        self._settling = False
        self._settled_at: float | None = None
        # Polls so far, and the last one's wake-up time (``quiet``).
        self._polls = 0
        self._wake: float | None = None

    # ---- inputs --------------------------------------------------------------------------

    def submit(
        self,
        model: str,
        rows: int,
        now: float,
        *,
        group: Hashable = (),
        deadline: float | None = None,
        batchable: bool = True,
        length: int = 0,
        worker: bool = False,
    ) -> int:
        """Admits a request and returns its id; ResourceExhausted when the queue is full.

        ``batchable=False`` puts the request in a batch of its own (a model whose ports have
        no dynamic batch dimension). ``length``: the sequence length of a ragged request.
        ``worker``: the model runs in the model worker (rule 3).
        """
        if rows < 1:
            raise InvalidArgument(f"a request needs at least one row, got {rows}")
        q = self._models.setdefault(model, _ModelQueue())
        q.worker = worker
        if len(self._live) >= self._cfg.max_queued:
            q.counters.rejected += 1
            raise ResourceExhausted(
                f"the inference queue is full ({len(self._live)} requests waiting); "
                "retry later, send to another node, or raise inference.max_queued"
            )
        rid = self._next_request
        self._next_request += 1
        key: Hashable = group if batchable else ("__alone__", rid)
        pending = Pending(rid, model, key, rows, now, deadline, length)
        if q.queued == 0:
            active = [m.used_s for m in self._models.values() if m.queued > 0]
            if active:
                q.used_s = max(q.used_s, min(active))
        q.groups.setdefault(key, deque()).append(pending)
        q.queued += 1
        q.queued_rows += rows
        q.queued_tokens += pending.tokens
        if length:
            q.queued_ragged += 1
        q.counters.admitted += 1
        q.settling.on_submit(rid, now, overlapped=q.queued > 1 or q.flight > 0)
        q.refill.on_submit(rows, now, busy=q.flight > 0)
        self._live[rid] = pending
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, rid))
        return rid

    def cancel(self, request_id: int) -> bool:
        """Withdraws a queued request (its caller went away); False if not queued."""
        pending = self._drop(request_id)
        if pending is None:
            return False
        self._models[pending.model].counters.cancelled += 1
        return True

    def poll(self, now: float) -> Decision:
        expired = self._expire(now)
        batches: list[Batch] = []
        self._settling, self._settled_at = False, None
        self._polls += 1
        while (batch := self._form(now)) is not None:
            batches.append(batch)
        for q in self._models.values():
            q.settling.on_polled()
        wake = self._wake_at(now)
        if self._settled_at is not None:
            wake = self._settled_at if wake is None else min(wake, self._settled_at)
        self._wake = wake
        return Decision(tuple(batches), tuple(expired), wake, self._settling)

    def quiet(self, request_id: int) -> bool:
        """The request just submitted cannot change what the last poll decided, so a poll
        may wait for that poll's ``wake_at``: its model's batch was held to a time (rule 3)
        and this request joins that very batch, neither filling it to half nor bringing a
        deadline before the wake-up. Requests arriving while a batch grows (many callers, a
        poll each) then cost no poll. Anything else (other models, batches done, cancels,
        expiries) changes the queue through its own path and polls as before."""
        p = self._live.get(request_id)
        if p is None:
            return False
        q = self._models[p.model]
        wake = self._wake
        if q.settling.held != (self._polls, p.group) or wake is None:
            return False
        if p.deadline is not None and p.deadline < wake:
            return False
        return q.settling.grows(q.queued_rows) and not self._full(q, p.group, 0.5)

    def on_batch_done(
        self, batch_id: int, service_s: float, ok: bool = True, now: float | None = None
    ) -> None:
        """The device finished a batch after ``service_s`` seconds of compute; ``now`` (the
        finish time) opens rule 2's refill window."""
        entry = self._in_flight.pop(batch_id, None)
        if entry is None:
            return
        batch, charged, in_worker = entry
        if in_worker:
            self._worker_flight -= 1
        else:
            self._local_flight -= 1
        q = self._models[batch.model]
        q.flight -= 1
        q.used_s += service_s - charged
        if not ok:
            q.counters.failed_batches += 1
            return
        q.settling.on_batch_done(batch.rows + q.queued_rows)
        tokens = sum(p.tokens for p in batch.requests)
        q.counters.observe(batch.rows, service_s, self._cfg.ewma_alpha, tokens)
        if now is not None:
            q.counters.observe_dispatch(batch.rows, now - batch.formed_at, self._cfg.ewma_alpha)
            # A batch of one request (a lone caller, or a model that cannot batch) has no
            # callers to wait for: its window measures and holds nothing.
            rows = batch.rows if len(batch.requests) > 1 else 1
            # What a batch costs as the engine sees it (hand-off and loop included), not its
            # forward pass alone: for a fast model in the worker, the hand-off is most of it.
            fixed = q.counters.batch_cost_s
            q.refill.on_batch_done(rows, now, fixed, self._cfg.max_queue_delay_s)

    # ---- queries -------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._live)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def seconds_per_row(self, model: str) -> float | None:
        """Measured service time per row of ``model`` (None before its first batch)."""
        q = self._models.get(model)
        return None if q is None else q.counters.s_per_row

    def batching_measured(self, model: str) -> bool:
        """Batches of ``model`` of different sizes have run (see ``ModelCounters``)."""
        q = self._models.get(model)
        return q is not None and q.counters.slope_known

    def seconds_per_token(self, model: str) -> float | None:
        """Measured service time per real token of ``model`` (per row without sequences)."""
        q = self._models.get(model)
        return None if q is None else q.counters.s_per_token

    def marginal_seconds_per_row(self, model: str) -> float | None:
        """What one more row adds to a batch of ``model`` (see ``stats``)."""
        q = self._models.get(model)
        return None if q is None else q.counters.marginal_s_per_row

    def marginal_seconds_per_token(self, model: str) -> float | None:
        """What one more real token adds to a batch of ``model``; None for a model whose
        batches had no sequences (its cost is per row) or before its first batch."""
        q = self._models.get(model)
        if q is None or not q.counters.has_sequences:
            return None
        return q.counters.marginal_s_per_token

    def full_batch_s(self, model: str) -> float | None:
        """What a full batch of ``model`` sums to in the scheduler's estimates (which price a
        task at what its rows, or its real tokens, add to a batch): ``max_batch_size`` rows,
        of the mean length seen for a model with sequences, within ``max_batch_tokens``.
        None before its first batch."""
        q = self._models.get(model)
        if q is None or not q.counters.rows:
            return None
        c, rows = q.counters, self._cfg.max_batch_size
        if c.has_sequences:
            per_token = c.marginal_s_per_token
            tokens = min(rows * c.tokens / c.rows, self._cfg.max_batch_tokens)
            return None if per_token is None else per_token * tokens
        per_row = c.marginal_s_per_row
        return None if per_row is None else per_row * rows

    def stats(self) -> dict[str, ModelStats]:
        return {m: ModelStats.of(m, q.queued, q.counters) for m, q in self._models.items()}

    def estimated_backlog_s(self) -> float:
        """Seconds of device time the queued and in-flight work needs, by the estimates: in
        tokens, so a queue of long sequences weighs more than one of short ones."""
        total = 0.0
        for q in self._models.values():
            total += q.queued_tokens * (q.counters.s_per_token or 0.0)
        for batch, _, _ in self._in_flight.values():
            per_token = self._models[batch.model].counters.s_per_token or 0.0
            total += sum(p.tokens for p in batch.requests) * per_token
        return total

    # ---- internals -----------------------------------------------------------------------

    def _drop(self, request_id: int) -> Pending | None:
        pending = self._live.pop(request_id, None)
        if pending is not None:
            q = self._models[pending.model]
            q.queued -= 1
            q.queued_rows -= pending.rows
            q.queued_tokens -= pending.tokens
            if pending.length:
                q.queued_ragged -= 1
        return pending

    def _expire(self, now: float) -> list[Pending]:
        out: list[Pending] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, rid = heapq.heappop(self._deadlines)
            pending = self._drop(rid)
            if pending is not None:
                self._models[pending.model].counters.expired += 1
                out.append(pending)
        return out

    def _heads(self, q: _ModelQueue) -> Iterator[tuple[Hashable, Pending]]:
        """(group, oldest live request) for each group; drops emptied groups."""
        for key in list(q.groups):
            line = q.groups[key]
            while line and line[0].request_id not in self._live:
                line.popleft()
            if line:
                yield key, line[0]
            else:
                del q.groups[key]

    def _oldest_group(self, q: _ModelQueue) -> tuple[Hashable, Pending] | None:
        best: tuple[Hashable, Pending] | None = None
        for key, head in self._heads(q):
            if best is None or head.request_id < best[1].request_id:
                best = (key, head)
        return best

    def _form(self, now: float) -> Batch | None:
        order: list[tuple[float, int, str, Hashable]] = []
        for name, q in self._models.items():
            if q.queued == 0:
                continue
            found = self._oldest_group(q)
            if found is not None:
                key, head = found
                order.append((q.used_s, head.request_id, name, key))
        for _, _, name, key in sorted(order, key=lambda o: (o[0], o[1])):
            q = self._models[name]
            if q.worker:  # rule 3: the model worker's own pipeline takes half-full batches
                if self._worker_flight >= self._worker_depth:
                    continue
                if self._worker_flight and not self._full(q, key, 0.5):
                    continue
                if not self._worker_flight and self._settles(q, key, now):
                    continue
            elif self._local_flight >= self._depth:
                continue
            elif self._local_flight and not self._full(q, key):
                continue  # rule 3
            if q.refill.holds(now) and not self._full(q, key):
                continue  # rule 2's refill window
            return self._take(name, q, key, now)
        return None

    def _settles(self, q: _ModelQueue, key: Hashable, now: float) -> bool:
        """Rule 3: a partial batch for the idle worker waits for more requests (see
        ``settling``): to a time (a wake-up then, unless a request fills it first), or one
        loop turn while new ones arrive."""
        cost = q.counters.batch_cost_s
        if not cost or self._full(q, key, 0.5):
            return False
        head = q.groups[key][0]
        settling = q.settling
        if settling.overlapping:
            until = settling.hold_until(
                head.enqueued_at, cost, self._cfg.max_queue_delay_s, q.queued_rows
            )
            if now >= until:
                return False
            if self._settled_at is None or until < self._settled_at:
                self._settled_at = until
            settling.held = (self._polls, key)
            return True
        if settling.arrived_since_poll(head.request_id):
            self._settling = True
            return True
        return False

    def _full(self, q: _ModelQueue, key: Hashable, share: float = 1.0) -> bool:
        """The group's live rows (or, ragged, its tokens) fill ``share`` of a batch."""
        if not q.queued_ragged and q.queued_rows < share * self._cfg.max_batch_size:
            return False  # the model's rows, all groups together, do not: no walk needed
        line = q.groups[key]
        rows = tokens = 0
        lengths: list[int] = []
        for p in line:
            if p.request_id in self._live:
                if p.length and not self._fits(rows, lengths, p):
                    return True
                rows += p.rows
                tokens += p.tokens
                lengths.append(p.length)
                if rows >= share * self._cfg.max_batch_size:
                    return True
                if p.length and tokens >= share * self._cfg.max_batch_tokens:
                    return True
        return False

    def _fits(self, rows: int, lengths: list[int], p: Pending, real: int = 0) -> bool:
        if not p.length:
            return rows == 0 or rows + p.rows <= self._cfg.max_batch_size
        return ragged.fits(
            rows, lengths, p.rows, p.length, max_rows=self._cfg.max_batch_size,
            max_tokens=self._cfg.max_batch_tokens, bucket=self._cfg.length_bucket,
            real_tokens=real, max_padding=self._cfg.max_padding_ratio,
        )  # fmt: skip

    def _take(self, name: str, q: _ModelQueue, key: Hashable, now: float) -> Batch:
        line = q.groups[key]
        taken: list[Pending] = []
        rows = real = 0
        lengths: list[int] = []
        # Ragged requests too long or too short for the batch forming (rule 7's padding
        # bound) stay queued, in order, while later ones of a fitting length join it.
        skipped: list[Pending] = []
        while line:
            p = line[0]
            if p.request_id not in self._live:
                line.popleft()
                continue
            if taken and not self._fits(rows, lengths, p, real):
                if not p.length or rows >= self._cfg.max_batch_size:
                    break
                skipped.append(line.popleft())
                continue
            line.popleft()
            self._drop(p.request_id)
            taken.append(p)
            rows += p.rows
            real += p.rows * p.length
            lengths.append(p.length)
        line.extendleft(reversed(skipped))
        if not line:
            del q.groups[key]
        batch = Batch(self._next_batch, name, tuple(taken), rows, now)
        self._next_batch += 1
        charge = rows * (q.counters.s_per_row or 0.0)
        q.used_s += charge
        q.counters.batches += 1
        q.counters.items += len(taken)
        q.counters.rows += rows
        q.counters.batch_sizes[rows] = q.counters.batch_sizes.get(rows, 0) + 1
        q.counters.queue_s += sum(now - p.enqueued_at for p in taken)
        if any(lengths):
            q.counters.has_sequences = True
            q.counters.tokens += sum(p.rows * p.length for p in taken)
            q.counters.padded_tokens += ragged.padded_tokens(rows, lengths, self._cfg.length_bucket)
        else:
            q.counters.tokens += rows
            q.counters.padded_tokens += rows
        self._in_flight[batch.batch_id] = (batch, charge, q.worker)
        q.flight += 1
        if q.worker:
            self._worker_flight += 1
        else:
            self._local_flight += 1
        return batch

    def _wake_at(self, now: float) -> float | None:
        while self._deadlines and self._deadlines[0][1] not in self._live:
            heapq.heappop(self._deadlines)
        wake = self._deadlines[0][0] if self._deadlines else None
        if not self._in_flight:  # a refill window ends: what is queued goes then
            for q in self._models.values():
                if q.queued and q.refill.holds(now):
                    t = q.refill.ends_at()
                    wake = t if wake is None else min(wake, t)
        return wake

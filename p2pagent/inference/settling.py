"""Settling: how long a partial batch for an idle model worker waits for more rows.

Pure, one per model, owned by the batching policy (rule 3 in ``batching``). Why it exists:
an in-process batch gathers the requests the event loop takes while the compute thread
waits for the interpreter; the model worker, another process, answers before the loop has
read the next ones, so every batch was one row and paid the hand-off alone (1.01 rows per
batch at 32 callers, in-process 1.22). Each row that joins a batch saves that batch's fixed
cost (the hand-off and the daemon's own per-batch work, ~120 us).

What it watches of a model's arrivals:

- the share of recent requests that *overlapped* (arrived while another of the model was
  queued or in flight: several callers);
- the gap between overlapping arrivals (how soon the next row of a busy model comes);
- the rows the model's callers keep in the engine (a finished batch's rows plus those
  queued then: a peak that decays per batch).

What it decides, for a batch that is not yet half full:

- Requests overlap: wait until the oldest has waited what a batch costs
  (``stats.batch_cost_s``, at most ``max_queue_delay_s``).
- Most requests overlap (many callers: 32 in flight on a stream, read by the loop one
  message at a time, far apart compared with a no-op batch's cost): also wait while the next
  request is expected within ``GROW_GAPS`` measured gaps (at most ``max_queue_delay_s`` in
  all) and fewer rows are queued than the callers keep in the engine (a closed loop of 8
  sends nothing more once its 8 are queued). Where the loop bounds the callers the wait
  costs them no throughput: it reads their next requests meanwhile. The settling cost alone
  gave 1.8 rows per batch on that stream, this ~10.
- Else: one turn of the event loop while new requests keep arriving (``Decision.repoll``:
  the engine polls again on its next turn). A lone caller (never overlapping) waits at most
  that, microseconds, and not even that while the cost is unknown (before batches of two
  sizes, or once only lone ones ran).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

#: The weight of each request in the overlap share (about the last 20 requests count), and
#: the share from which a worker batch waits what a batch costs. A lone caller (one request
#: at a time) never overlaps: its share is 0 and it never waits so.
OVERLAP_ALPHA = 0.05
OVERLAP_TO_SETTLE = 0.01
#: From this overlap share on (most requests find another of the model queued or in flight:
#: many callers, a loop that reads them one at a time), a worker batch also waits while
#: requests keep coming, up to ``GROW_GAPS`` measured gaps after the newest.
OVERLAP_TO_GROW = 0.5
GROW_GAPS = 2.0
#: Weight of the newest gap between overlapping arrivals in its average.
GAP_ALPHA = 0.1
#: How fast the rows a model's callers keep in the engine (a decaying peak) forget a higher
#: count, per finished batch.
CALLERS_DECAY = 0.9


@dataclass
class Settling:
    #: The newest request's id, and what it was at the last poll (the one-turn wait).
    newest: int = 0
    newest_polled: int = 0
    #: Share of recent requests that overlapped (EWMA).
    overlap: float = 0.0
    #: When the newest request arrived, and the gap between arrivals that overlapped (EWMA;
    #: None until two did).
    last_at: float | None = None
    gap: float | None = None
    #: Rows the model's callers keep in the engine (0: unknown).
    callers: float = 0.0
    #: (poll number, group) of a batch that poll held to a time, see ``BatchPolicy.quiet``.
    held: tuple[int, Hashable] | None = None

    def on_submit(self, request_id: int, now: float, overlapped: bool) -> None:
        self.newest = request_id
        self.overlap += OVERLAP_ALPHA * ((1.0 if overlapped else 0.0) - self.overlap)
        if overlapped and self.last_at is not None:
            sample = now - self.last_at
            self.gap = sample if self.gap is None else self.gap + GAP_ALPHA * (sample - self.gap)
        self.last_at = now

    def on_polled(self) -> None:
        self.newest_polled = self.newest

    def on_batch_done(self, rows_seen: int) -> None:
        """A batch finished; ``rows_seen``: its rows and the model's rows queued then."""
        self.callers = max(float(rows_seen), self.callers * CALLERS_DECAY)

    @property
    def overlapping(self) -> bool:
        return self.overlap >= OVERLAP_TO_SETTLE

    def grows(self, queued_rows: int) -> bool:
        """The growing hold applies: most requests overlap (many callers) and fewer rows are
        queued than the callers keep in the engine."""
        return self.overlap >= OVERLAP_TO_GROW and queued_rows < self.callers

    def hold_until(
        self, oldest_at: float, batch_cost_s: float, max_delay_s: float, queued_rows: int
    ) -> float:
        """For overlapping requests: until when a partial batch whose oldest request came at
        ``oldest_at`` waits for more."""
        cap = oldest_at + max_delay_s
        until = min(oldest_at + batch_cost_s, cap)
        if self.grows(queued_rows) and self.gap is not None and self.last_at is not None:
            until = min(cap, max(until, self.last_at + GROW_GAPS * self.gap))
        return until

    def arrived_since_poll(self, oldest_id: int) -> bool:
        """For a lone caller's batch: new requests came since the last poll, and the batch's
        oldest among them (so it waits one loop turn, never more)."""
        return self.newest != self.newest_polled and oldest_id > self.newest_polled

"""The refill window: whether a partial batch should wait for the callers of the last one.

Pure, one per model, owned by the batching policy (rule 2 in ``batching``). A closed loop
(agents that send again as soon as they get an answer) returns a finished batch's N rows
to the queue over a short spread of time. Dispatching the first one back alone to an idle
device splits every cycle into a batch of 1 and one of N-1, and the device pays the model's
fixed cost per batch twice (measured on a GPU with a 14 ms fixed cost: 0.47x the offline
ceiling). Holding the first ones until the rest are back pays only when they come back
quickly compared with that fixed cost, so the window measures how long the rows of a batch
take to return, whether or not it held them, and holds after a batch of N > 1 rows from
several requests, until the N are back, only when:

- the model has a fixed cost per batch (``ModelCounters.fixed_s``; batching a model without
  one gains nothing);
- the rows are expected back in under half that fixed cost (the wait costs at most half of
  what it saves) and within ``inference.max_queue_delay_s`` (a hold cut short would idle the
  device and still split the batch), and then for at most 1.5x the return time, the fixed
  cost, and ``inference.max_queue_delay_s``, whichever is least.

Light traffic (batches of one request) never waits. On a host whose event loop returns the rows
slowly (a CPU shared by the loop and the forward passes: the first row back runs while the
others arrive), the window does not hold either.

Growing (more callers than a batch holds): where requests arrived in the last window while a
batch was running (callers besides the last batch's: 32 in flight on a stream whose batches
the daemon's event loop hands over 3 at a time), holding for "the N" would keep batches at N
forever. The window then holds while rows keep coming: until the batch is full,
no row came for twice the measured gap between arrivals, or the fixed cost (and
``max_queue_delay_s``) has passed; only where that gap is under half the fixed cost (each row
waited for is expected well before another batch's fixed cost). A closed loop of exactly N
callers sends nothing while its batch runs, so it never grows and pays no extra wait.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RefillWindow:
    #: Weight of the newest return time in the average: a property of the host and its
    #: callers, steadier than service times, and a sample is sometimes a lower bound only
    #: (below), so new samples count for half.
    alpha: float = 0.5
    #: When the last batch finished, and the rows awaited back from it (0 after a batch of
    #: one request: nothing to wait for or measure).
    opened_at: float = 0.0
    rows: int = 0
    #: Rows submitted since it finished: its return is being measured while below ``rows``.
    arrived: int = 0
    #: Seconds a batch's rows take to come back (EWMA); None until measured.
    return_s: float | None = None
    #: Hold partial batches until this time (while fewer than ``rows`` have come back).
    until: float = 0.0
    #: When the last request arrived, and the gap between requests arriving in a window
    #: (EWMA; None until measured).
    last_at: float = 0.0
    gap_s: float | None = None
    #: A request arrived in the open window while a batch of the model was in flight: more
    #: callers than the one batch (a closed loop of exactly the batch's callers sends
    #: nothing while its batch runs).
    others: bool = False
    #: The window holds while rows keep coming (see the module docstring), not for ``rows``.
    growing: bool = False

    @property
    def measuring(self) -> bool:
        return self.arrived < self.rows

    def on_submit(self, rows: int, now: float, busy: bool = False) -> None:
        """``rows`` arrived; ``busy``: while a batch of the model was in flight."""
        # Gaps between rows coming back (two arrivals in one window, while awaited), not the
        # idle time between bursts.
        if self.rows and self.last_at >= self.opened_at and (self.measuring or self.growing):
            gap = now - self.last_at
            self.gap_s = gap if self.gap_s is None else self.gap_s + self.alpha * (gap - self.gap_s)
        self.last_at = now
        if self.measuring:
            self.arrived += rows
            if not self.measuring:
                self._observe(now - self.opened_at)
        if busy and self.rows:
            self.others = True

    def on_batch_done(self, rows: int, now: float, fixed_s: float | None, cap_s: float) -> None:
        """A batch of ``rows`` finished (pass 1 for a batch of one request)."""
        if self.measuring:
            # The last batch's rows were not all back when this one finished: at least this
            # slow, which is enough to see that holding them would not have paid.
            self._observe(now - self.opened_at)
        others = self.others
        self.opened_at, self.rows, self.arrived = now, rows if rows > 1 else 0, 0
        self.until, self.others, self.growing = now, False, False
        if not self.measuring or not fixed_s:
            return
        back, gap = self.return_s, self.gap_s
        if others and gap is not None and gap < fixed_s / 2:
            self.growing = True
            self.until = now + min(cap_s, fixed_s)
        elif back is not None and back < min(fixed_s / 2, cap_s):
            self.until = now + min(cap_s, fixed_s, 1.5 * back)

    def holds(self, now: float) -> bool:
        """A partial batch should wait: rows of the last batch are still on their way back
        (counted by arrivals, not by queue length: rows left behind earlier are queued too),
        or, growing, rows keep coming."""
        return now < self.ends_at() if self.growing else now < self.until and self.measuring

    def ends_at(self) -> float:
        """When the hold ends unless a batch fills first (growing: no row for 2 gaps)."""
        if self.growing and self.gap_s is not None:
            return min(self.until, max(self.last_at, self.opened_at) + 2 * self.gap_s)
        return self.until

    def _observe(self, seconds: float) -> None:
        if self.return_s is None:
            self.return_s = seconds
        else:
            self.return_s += self.alpha * (seconds - self.return_s)

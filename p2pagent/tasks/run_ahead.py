"""How much work a node hands its engine ahead of the batch it runs: the rules beyond
``tasks.run_ahead_s`` (``TaskNode._may_start_another`` applies them in this order).

Work handed to the engine (started) cannot be stolen any more, so a node starts queued work
only while less than ``tasks.run_ahead_s`` of it is started; the rest stays in the queue for
idle peers. Two exceptions, each for work no one else would take anyway:

1. **Exploring batching** (``EXPLORE_STARTED``): while a running task's model has only run
   batches of one size, up to three start whatever their estimates, within this node's share
   of what it holds (``own_share_s``), so the engine sees what a row adds to a batch.
2. **A full batch behind the running one** (``batch_room``): where this model's work can only
   run here (placement keeps tasks at their origin, and this mesh does not steal or no live
   peer serves the model), started work of a model may cover the batch the engine runs and
   one full batch behind it (``full_batch_s``: the engine's own batch size in the estimates'
   seconds). Else a model of cheap rows was handed only ``run_ahead_s`` of them at a time:
   0.1 s is ~9 texts of ~11 ms for a CPU encoder, so its engine never saw a full batch (2.3
   rows per batch where 32 may go; measured, RESULTS "Texts through the scheduler"). Not
   under placements that weigh load (least loaded, round robin): running work counts per
   execution slot in the load they weigh, so starting more hid it (simulated: 1.02 -> 1.13x
   ideal).
"""

from __future__ import annotations

from collections.abc import Iterable

from p2pagent.tasks.spec import Task

#: Tasks started whatever their estimates while a running task's model has only run batches
#: of one size: one running and two queued behind it, so the engine runs a batch of two and
#: measures what a row adds to a batch. With one (the rule otherwise) such a model whose
#: batches cost more than ``run_ahead_s`` / 2 only ever ran batches of one: its estimate
#: stayed the whole batch's cost, which kept the next tasks back (measured: 16 req/s at any
#: concurrency for a 60 ms-per-batch model that batches 32 rows in 80 ms). Only within this
#: node's share of the work it holds (``own_share_s``): started work cannot be stolen, and
#: three 200 ms tasks started at the origin of eight made the burst last three rounds.
EXPLORE_STARTED = 3

#: Batches of a model the engine may hold from started work under rule 2: the one it runs
#: and a full one formed behind it, ready when the first finishes.
BATCHES_AHEAD = 2


def own_share_s(fixed_s: float, movable_s: float, speed: float, peers_speed: float) -> float:
    """Seconds of speed-1.0 work a node ends up running of what it holds when its peers take
    their part of it: ``fixed_s`` (started, or stolen here: it cannot move) stays, and the
    whole is shared in proportion to speed among this node and peers of ``peers_speed``."""
    total = fixed_s + movable_s
    return max(fixed_s, total * speed / max(speed + peers_speed, 1e-9))


def batch_room(started: Iterable[Task], model: str, full_batch_s: float | None) -> bool:
    """Rule 2: the work started of ``model`` is under ``BATCHES_AHEAD`` full batches of it
    (``full_batch_s``: None or 0 before the engine has run the model, or where it does not
    batch: no room beyond ``run_ahead_s`` then). The caller has checked that no peer can
    steal the work."""
    if not full_batch_s or full_batch_s <= 0:
        return False
    mine = sum(t.est_cost_s for t in started if t.model == model)
    return mine < BATCHES_AHEAD * full_batch_s - 1e-9  # sums of estimates

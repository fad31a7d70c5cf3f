"""Settings of the task capability: queue, load model, work stealing and leases.

One dataclass, nested in the node Config as ``[tasks]``. Every knob is documented where it is
declared; the formulas that use them live in small named functions next to their users.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pagent.errors import ConfigError

#: Most tasks one ``Agent.ListTasks`` answer lists (a bound of the API, not a setting).
MAX_LIST_TASKS = 10_000


@dataclass
class TasksConfig:
    """Knobs of the task queue, load model, steal policy and origin lease table."""

    #: Where a submitted task goes first: work_stealing (queued here; idle peers steal),
    #: least_loaded, round_robin or local (see tasks/placement.py). Formerly the top-level
    #: ``placement`` key, which is now refused with a pointer here.
    placement: str = "work_stealing"

    # ---- queue ---------------------------------------------------------------------------
    #: Most tasks one node holds queued (not yet running); more is ResourceExhausted.
    max_queued: int = 10_000

    #: Work handed to the inference engine cannot be stolen any more. A node starts another
    #: of its queued tasks only while the estimated work of those already started is below
    #: this many seconds (one always runs; three while the engine is still measuring what
    #: batching saves; where only this node can run the model's work, as under local
    #: placement, a running batch and a full one behind it: see tasks/run_ahead.py): enough
    #: for the engine to form full batches of cheap models, while the queue of expensive ones
    #: stays stealable.
    run_ahead_s: float = 0.1

    # ---- the door: what one task and one caller may bring ---------------------------------
    #: Most bytes of input tensor data one task (``Submit``, ``SubmitAndWait``) or ``Infer``
    #: call may carry (4 MiB); a request over it is refused before it is decoded. Tasks are
    #: journaled and may move between nodes whole: send big inputs through state or a model.
    max_payload_bytes: int = 4 * 1024 * 1024
    #: Most bytes of output tensor data one task's result may carry (32 MiB). A result over it
    #: fails its task with INVALID_ARGUMENT where it ran, and a ``Peer.Complete`` over it is
    #: refused before it is decoded. Keep it equal on every node.
    max_result_bytes: int = 32 * 1024 * 1024
    #: Most unfinished tasks (queued, running or waiting for their result's delivery) one
    #: caller identity may have at a node; more is RESOURCE_EXHAUSTED with a retry-after hint.
    max_queued_per_identity: int = 2_000
    #: Most bytes of input those unfinished tasks of one identity may hold at a node (1 GiB:
    #: a burst of a few hundred tasks of batched inputs, like the demo's 200 of 2 MiB).
    max_queued_bytes_per_identity: int = 1024 * 1024 * 1024
    #: Submissions (each journaled, with fsync) per second one caller identity may make at a
    #: node, with bursts of twice as many; more is RESOURCE_EXHAUSTED with a retry-after hint.
    #: On top of the node's ``rate_limit`` on every call. 0 = only that limit.
    submit_rate_per_identity: float = 200.0
    #: Bounds of the retry-after hint of a quota refusal, seconds: the hint is the node's
    #: backlog (when the queued work ahead may have run), clamped to these.
    retry_after_min_s: float = 0.1
    retry_after_max_s: float = 30.0
    # ---- cost of moving a task (Dask's rule) ---------------------------------------------
    #: Assumed node-to-node bandwidth for shipping task inputs, bytes per second (1 Gbit/s).
    bandwidth_bytes_per_s: float = 125_000_000.0
    #: Fixed cost of one hand-over (round trips, serialisation), seconds.
    transfer_latency_s: float = 0.001
    #: A task is worth moving only if compute >= ratio * transfer: with 10, moving it adds at
    #: most 10 % to its run time, so a steal cannot make things much worse even when the
    #: estimate of the victim's backlog is stale.
    steal_cost_ratio: float = 10.0
    #: Whether a node hands over tasks it did not originate (assigned to it). Off by default:
    #: the origin must then learn of the move from the victim, which needs one more message
    #: and opens a window in which two executors may run the task (delivery stays exactly
    #: once, but compute is wasted). With it off, every steal is a local, atomic step at the
    #: origin.
    steal_foreign: bool = False

    # ---- load model ----------------------------------------------------------------------
    #: EWMA weight of the newest service-time sample.
    ewma_alpha: float = 0.2
    #: Peer load reports older than this are ignored (the peer may be gone or wedged).
    report_max_age_s: float = 10.0

    # ---- stealing (thief side) -----------------------------------------------------------
    #: Steal when the work queued here (not running) would take less than this, seconds.
    steal_low_water_s: float = 0.05
    #: Ask for enough tasks to cover this much time at our speed.
    steal_batch_s: float = 0.2
    #: Upper bound on tasks asked for in one steal.
    steal_max_tasks: int = 64
    #: Peers whose estimated backlog is below this are never robbed: they finish soon anyway.
    min_victim_backlog_s: float = 0.05
    #: A model we lack is worth pulling for a steal when its tasks run at least this many
    #: times longer than the pull.
    pull_payoff_ratio: float = 4.0
    #: Back-off after an empty or failed steal: base * 2**(failures-1), capped, with jitter.
    steal_backoff_base_s: float = 0.01
    steal_backoff_max_s: float = 1.0
    #: A steal with no answer after this long counts as failed.
    steal_timeout_s: float = 1.0

    # ---- leases (origin side) ------------------------------------------------------------
    #: A remote holder must be heard from (heartbeat, load report or membership alive)
    #: within this long, or its tasks are re-queued.
    lease_s: float = 10.0
    #: After a hand-over, the new holder's load reports must list the task once this much
    #: time has passed; a task missing then was lost in transit and is re-queued.
    handoff_grace_s: float = 3.0
    #: Attempts before the origin gives up on a task (executors died or refused each time).
    max_attempts: int = 8
    #: Error codes from an executor that mean "try elsewhere", not "the task is bad".
    retryable_codes: list[str] = field(
        default_factory=lambda: ["UNAVAILABLE", "RESOURCE_EXHAUSTED", "ABORTED"]
    )
    #: Delivered task ids are remembered this long to discard late duplicate results.
    done_retention_s: float = 600.0

    # ---- timing of the node's scheduler (tasks/core.py) ----------------------------------
    #: A node holding other origins' tasks reports to each of them this often (``Peer.Load``:
    #: their leases are renewed and lost hand-overs found from it). An idle node sends none.
    report_interval_s: float = 0.25
    #: After a change to the queue (not an urgent one: a chance to steal, a burst worth
    #: gossiping), the scheduler's periodic work runs within this long: batched, not per task.
    tick_s: float = 0.05
    #: A result not yet acknowledged by its origin is sent again this often.
    complete_retry_s: float = 0.5
    #: How long an ``Agent.Infer`` call's task is remembered once done (to drop a late
    #: duplicate result): it cannot be waited for, and a busy node serves many of them.
    inline_retain_s: float = 60.0
    #: How often results delivered more than ``done_retention_s`` ago are forgotten (at most;
    #: half the retention when that is shorter).
    forget_interval_s: float = 10.0
    #: A steal request reaching the victim with less than this left before the thief's
    #: deadline gets nothing: tasks in an answer the thief has stopped waiting for would sit
    #: leased to it, unrun, until the lease expires.
    steal_answer_margin_s: float = 0.25
    #: Deadline of one ``Peer.Assign``, ``Peer.Complete`` or ``Peer.Load`` call.
    peer_call_timeout_s: float = 5.0

    # ---- the journal's writer process (tasks/journal.py) ---------------------------------
    #: A writer that ran at least this long before dying is started again at once; one that
    #: dies sooner waits ``journal_restart_delay_s``, twice as long each time it happens
    #: again, up to ``journal_restart_max_s``.
    journal_stable_s: float = 10.0
    journal_restart_delay_s: float = 0.5
    journal_restart_max_s: float = 30.0
    #: How long stopping waits for the writer to commit what it has and exit before killing it.
    journal_close_timeout_s: float = 10.0
    #: How long starting waits for the writer's first answer before the node refuses to start
    #: (a stalled disk).
    journal_open_timeout_s: float = 30.0
    #: The submission of a task whose caller waits for its result on the same call
    #: (``SubmitAndWait``, ``SubmitStream``) and whose estimate is below this is held back up
    #: to this long: if the task finishes meanwhile, its submission and result are committed
    #: together, one fsync instead of two in a row. Nothing is shown before it is durable;
    #: only the first event (the id) of such a call comes later. Such a SubmitAndWait that
    #: can start here at once runs in the call and is journaled whole once finished (its
    #: result is its one event). 0: never held, never run in the call.
    journal_hold_s: float = 0.005

    def validate(self) -> TasksConfig:
        from p2pagent.tasks.placement import PLACEMENTS  # it imports this module

        if self.placement not in PLACEMENTS:
            raise ConfigError(
                f"unknown tasks.placement {self.placement!r}: choose one of {', '.join(PLACEMENTS)}"
            )
        positive = {
            "max_queued": self.max_queued,
            "max_payload_bytes": self.max_payload_bytes,
            "max_result_bytes": self.max_result_bytes,
            "max_queued_per_identity": self.max_queued_per_identity,
            "max_queued_bytes_per_identity": self.max_queued_bytes_per_identity,
            "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
            "steal_cost_ratio": self.steal_cost_ratio,
            "steal_batch_s": self.steal_batch_s,
            "run_ahead_s": self.run_ahead_s,
            "steal_max_tasks": self.steal_max_tasks,
            "steal_backoff_base_s": self.steal_backoff_base_s,
            "steal_timeout_s": self.steal_timeout_s,
            "lease_s": self.lease_s,
            "max_attempts": self.max_attempts,
            "report_interval_s": self.report_interval_s,
            "tick_s": self.tick_s,
            "complete_retry_s": self.complete_retry_s,
            "inline_retain_s": self.inline_retain_s,
            "forget_interval_s": self.forget_interval_s,
            "peer_call_timeout_s": self.peer_call_timeout_s,
            "journal_stable_s": self.journal_stable_s,
            "journal_restart_delay_s": self.journal_restart_delay_s,
            "journal_close_timeout_s": self.journal_close_timeout_s,
            "journal_open_timeout_s": self.journal_open_timeout_s,
            "retry_after_min_s": self.retry_after_min_s,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"tasks.{name} must be > 0, got {value}")
        if self.submit_rate_per_identity < 0:
            raise ConfigError(
                "tasks.submit_rate_per_identity must be >= 0 submissions/s (0: no own limit)"
            )
        if not 0 < self.ewma_alpha <= 1:
            raise ConfigError(f"tasks.ewma_alpha must be in (0, 1], got {self.ewma_alpha}")
        if not 0 <= self.journal_hold_s <= 1:
            raise ConfigError(
                "tasks.journal_hold_s must be 0-1 seconds (0: never hold), "
                f"got {self.journal_hold_s}"
            )
        if self.steal_answer_margin_s < 0:
            raise ConfigError("tasks.steal_answer_margin_s must be >= 0 seconds")
        if self.journal_restart_max_s < self.journal_restart_delay_s:
            raise ConfigError(
                "tasks.journal_restart_max_s must be >= tasks.journal_restart_delay_s"
            )
        if self.retry_after_max_s < self.retry_after_min_s:
            raise ConfigError("tasks.retry_after_max_s must be >= tasks.retry_after_min_s")
        if self.steal_backoff_max_s < self.steal_backoff_base_s:
            raise ConfigError("tasks.steal_backoff_max_s must be >= tasks.steal_backoff_base_s")
        return self

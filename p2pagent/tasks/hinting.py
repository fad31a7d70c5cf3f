"""The tasks side of load hints: when a node tells the mesh how busy it is, and in what words.

A node's load reaches its peers as a membership load hint (``membership/hints.py``): gossip
with bounded fanout, piggybacked on SWIM's own messages. This module decides when the load
changed *materially* (``HintPolicy``), so that an idle or steady node says nothing at all:

- the first hint (a peer must learn which models we serve);
- the node became worth robbing, or stopped being so (``min_victim_backlog_s``): the first is
  *urgent*, gossiped at once rather than at the next round, since idle peers start stealing
  from a burst only when they hear of it (and so is a backlog that grew by half);
- the models it serves changed, or the models it has stealable work for;
- while worth robbing: the backlog moved by ``HINT_CHANGE_FRACTION`` of itself, or the last
  hint is half ``report_max_age_s`` old (a busy node's hint is refreshed; an idle node's
  "nothing here" never needs to be).

It also converts between the tasks' ``LoadReport`` and the wire-sized ``LoadHint``: at most
``MAX_HINT_QUEUED`` models of queued work (the largest) and ``MAX_HINT_MODELS`` served models.
A hint never carries the ids of tasks held (``LoadReport.held``): those go to each origin in
``Peer.Load`` calls, which only nodes holding someone else's tasks make.

Pure: ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from p2pagent.membership.hints import MAX_HINT_MODELS, MAX_HINT_QUEUED, LoadHint, QueuedWork
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.load import LoadReport, ModelBacklog

#: A backlog that moved by at least this fraction of itself is worth a new hint.
HINT_CHANGE_FRACTION = 0.5


class HintChannel(Protocol):
    """Where hints go out and come in: the membership driver."""

    def publish_load_hint(self, hint: LoadHint, urgent: bool = False) -> None: ...

    def subscribe_hints(self, listener: Callable[[LoadHint], None]) -> Callable[[], None]: ...


def to_hint(report: LoadReport) -> LoadHint:
    """The wire-sized summary of ``report`` (its ``seq`` is stamped by membership)."""
    largest = sorted(report.queued, key=lambda q: (-q.cost_s, q.model))[:MAX_HINT_QUEUED]
    return LoadHint(
        node=report.node,
        seq=0,
        backlog_s=report.backlog_s,
        queue_len=report.queue_len,
        running=report.running,
        capacity=report.capacity,
        speed=report.speed,
        models=tuple(sorted(report.models)[:MAX_HINT_MODELS]),
        queued=tuple(QueuedWork(q.model, q.count, q.cost_s) for q in largest),
    )


def from_hint(hint: LoadHint) -> LoadReport:
    """A load report as placement and the steal policy read it; holds no task ids."""
    return LoadReport(
        node=hint.node,
        seq=hint.seq,
        backlog_s=hint.backlog_s,
        queue_len=hint.queue_len,
        running=hint.running,
        capacity=hint.capacity,
        speed=hint.speed,
        models=frozenset(hint.models),
        queued=tuple(ModelBacklog(q.model, q.count, q.cost_s) for q in hint.queued),
    )


def robbable(hint: LoadHint, cfg: TasksConfig) -> bool:
    """Whether thieves should come: enough backlog, and some of it stealable."""
    return hint.backlog_s >= cfg.min_victim_backlog_s and any(q.count for q in hint.queued)


class HintPolicy:
    """Decides, for each fresh view of our own load, whether to publish it and how fast."""

    def __init__(self, cfg: TasksConfig) -> None:
        self.cfg = cfg
        self._last: LoadHint | None = None
        self._last_at = 0.0

    def decide(self, hint: LoadHint, now: float) -> tuple[bool, bool]:
        """(publish, urgent) for our current load ``hint``; remembers it when published."""
        publish, urgent = self._judge(hint, now)
        if publish:
            self._last, self._last_at = hint, now
        return publish, urgent

    def grew(self, backlog_s: float) -> bool:
        """A cheap pre-check for the driver: our backlog is now ``backlog_s``, enough more
        than we last said that the next ``decide`` publishes at once."""
        last = self._last
        return (
            last is not None
            and robbable(last, self.cfg)
            and backlog_s - last.backlog_s >= HINT_CHANGE_FRACTION * last.backlog_s
        )

    def refresh_at(self) -> float | None:
        """When a busy node's hint needs refreshing even if nothing changed; None if idle."""
        if self._last is None or not robbable(self._last, self.cfg):
            return None
        return self._last_at + self.cfg.report_max_age_s / 2

    def _judge(self, hint: LoadHint, now: float) -> tuple[bool, bool]:
        last = self._last
        if last is None:
            return True, robbable(hint, self.cfg)
        was, now_robbable = robbable(last, self.cfg), robbable(hint, self.cfg)
        if was != now_robbable:
            return True, now_robbable
        if hint.models != last.models:
            return True, False
        if not now_robbable:
            return False, False  # idle or steady below the bar: nothing worth saying
        if {q.model for q in hint.queued} != {q.model for q in last.queued}:
            return True, False
        if abs(hint.backlog_s - last.backlog_s) >= HINT_CHANGE_FRACTION * last.backlog_s:
            # More to steal spreads at once too: thieves size their steals by the hint
            # (a fair share of what it lists), so a burst arriving over a few milliseconds
            # would otherwise be shared out as its first few tasks.
            return True, hint.backlog_s > last.backlog_s
        refresh = self.refresh_at()
        return refresh is not None and now >= refresh, False

"""The change log behind the Watch API: every applied change gets the next local sequence number.

The log is a bounded in-memory ring of the latest ``change_log_size`` changes. The store
persists each change's ``(seq, namespace, key)`` too (see :mod:`p2pagent.state.store`), so the
numbering continues across restarts and a restarted node can refill the ring. A watcher that
reconnects with ``from_seq`` still in the ring misses nothing; one that is further behind is
told so (``complete=False``) and should rescan the prefix, then watch from :attr:`last_seq`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from p2pagent.state.values import Change, ReadResult


class ChangeLog:
    __slots__ = ("_ring", "last_seq")

    def __init__(self, size: int, last_seq: int = 0, recent: Iterable[Change] = ()) -> None:
        self._ring: deque[Change] = deque(recent, maxlen=size)
        #: Sequence number of the latest change (0 when there has been none).
        self.last_seq = max(last_seq, self._ring[-1].seq if self._ring else 0)

    def append(self, ns: str, key: str, value: ReadResult) -> Change:
        self.last_seq += 1
        change = Change(self.last_seq, ns, key, not value.found, value)
        self._ring.append(change)
        return change

    @property
    def first_seq(self) -> int:
        """Oldest sequence number still held (last_seq + 1 when the ring is empty)."""
        return self._ring[0].seq if self._ring else self.last_seq + 1

    def after(self, seq: int) -> list[Change]:
        """Every change held with a sequence number above ``seq``, oldest first."""
        if seq >= self.last_seq:
            return []
        out: list[Change] = []
        for change in reversed(self._ring):  # newest first: a few new changes cost a few steps
            if change.seq <= seq:
                break
            out.append(change)
        out.reverse()
        return out

    def since(
        self, from_seq: int, ns: str, prefix: str = "", limit: int = 1000
    ) -> tuple[list[Change], bool]:
        """Changes with ``seq > from_seq`` under ``ns``/``prefix`` (at most ``limit``), and
        whether the log still held everything after ``from_seq`` (False: rescan)."""
        complete = from_seq + 1 >= self.first_seq
        out: list[Change] = []
        for change in self._ring:
            if change.seq <= from_seq:
                continue
            if change.namespace == ns and change.key.startswith(prefix):
                out.append(change)
                if len(out) >= limit:
                    break
        return out, complete

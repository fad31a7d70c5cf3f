"""The change log behind the Watch API: every applied change gets the next local sequence number.

The log is a bounded in-memory ring of the latest ``change_log_size`` changes. The store
persists each change's ``(seq, namespace, key)`` too (see :mod:`p2pagent.state.store`), so the
numbering continues across restarts and a restarted node can refill the ring. A watcher that
reconnects with ``from_seq`` still in the ring misses nothing; one that is further behind is
told so (``complete=False``) and should rescan the prefix, then watch from :attr:`last_seq`.

The ring keeps a change's value only when it is small (``INLINE_ITEMS`` items of at most
``INLINE_BYTES`` in all). A big one (a set with thousands of elements, say) is read again when
the change is handed out, so the reader gets the key's newest value: holding the value of each
of the last 10,000 adds to one growing set would hold the set 10,000 times (quadratic memory;
this is what made daemons grow by 86% in a 10-minute chaos run). Watchers lose nothing by it:
a later change of that key follows with the same newest value.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from p2pagent.state.values import Change, ReadResult

INLINE_ITEMS = 16
INLINE_BYTES = 1024

Reader = Callable[[str, str], ReadResult]


def is_small(value: ReadResult) -> bool:
    items = len(value.values) + len(value.elements)
    if items > INLINE_ITEMS:
        return False
    return sum(map(len, value.values)) + sum(map(len, value.elements)) <= INLINE_BYTES


class ChangeLog:
    __slots__ = ("_read", "_ring", "last_seq")

    def __init__(
        self,
        size: int,
        read: Reader,
        last_seq: int = 0,
        recent: Iterable[tuple[int, str, str]] = (),
    ) -> None:
        """``read(namespace, key)`` gives a key's current value; ``recent`` are the latest
        ``(seq, namespace, key)`` of the store, to refill the ring after a restart."""
        self._read = read
        self._ring: deque[Change | tuple[int, str, str, bool]] = deque(maxlen=size)
        # Values of refilled changes are read when handed out, like big ones.
        self._ring.extend((seq, ns, key, False) for seq, ns, key in recent)
        #: Sequence number of the latest change (0 when there has been none).
        self.last_seq = max(last_seq, self._seq(self._ring[-1]) if self._ring else 0)

    def append(self, ns: str, key: str, value: ReadResult) -> Change:
        self.last_seq += 1
        change = Change(self.last_seq, ns, key, not value.found, value)
        self._keep(change, is_small(value))
        return change

    def _keep(self, change: Change, small: bool) -> None:
        if small:
            self._ring.append(change)
        else:
            self._ring.append((change.seq, change.namespace, change.key, change.deleted))

    @staticmethod
    def _seq(entry: Change | tuple[int, str, str, bool]) -> int:
        return entry.seq if isinstance(entry, Change) else entry[0]

    def _change(self, entry: Change | tuple[int, str, str, bool]) -> Change:
        if isinstance(entry, Change):
            return entry
        seq, ns, key, _ = entry
        value = self._read(ns, key)
        return Change(seq, ns, key, not value.found, value)

    @property
    def first_seq(self) -> int:
        """Oldest sequence number still held (last_seq + 1 when the ring is empty)."""
        return self._seq(self._ring[0]) if self._ring else self.last_seq + 1

    def after(self, seq: int, wanted: Callable[[str, str], bool] | None = None) -> list[Change]:
        """Every change held with a sequence number above ``seq``, oldest first; only those
        whose ``(namespace, key)`` is ``wanted`` when given (others are not read at all)."""
        if seq >= self.last_seq:
            return []
        out: list[Change | tuple[int, str, str, bool]] = []
        for entry in reversed(self._ring):  # newest first: a few new changes cost a few steps
            if self._seq(entry) <= seq:
                break
            if wanted is None or wanted(*self._where(entry)):
                out.append(entry)
        out.reverse()
        return [self._change(e) for e in out]

    @staticmethod
    def _where(entry: Change | tuple[int, str, str, bool]) -> tuple[str, str]:
        return (entry.namespace, entry.key) if isinstance(entry, Change) else entry[1:3]

    def since(
        self, from_seq: int, ns: str, prefix: str = "", limit: int = 1000
    ) -> tuple[list[Change], bool]:
        """Changes with ``seq > from_seq`` under ``ns``/``prefix`` (at most ``limit``), and
        whether the log still held everything after ``from_seq`` (False: rescan)."""
        complete = from_seq + 1 >= self.first_seq
        out: list[Change] = []
        for entry in self._ring:
            if self._seq(entry) <= from_seq:
                continue
            c_ns, c_key = self._where(entry)
            if c_ns == ns and c_key.startswith(prefix):
                out.append(self._change(entry))
                if len(out) >= limit:
                    break
        return out, complete

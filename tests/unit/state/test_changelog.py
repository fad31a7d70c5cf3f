"""The change log keeps small values and reads big ones again: its memory stays linear in the
number of changes, however large the values they touch grow."""

from __future__ import annotations

from p2pagent.state.changelog import INLINE_ITEMS, ChangeLog, is_small
from p2pagent.state.replica import Replica
from p2pagent.state.values import Change, ReadResult


def _held_items(log: ChangeLog) -> int:
    return sum(
        len(e.value.elements) + len(e.value.values)
        for e in log._ring  # the ring itself: what the log keeps alive
        if isinstance(e, Change)
    )


def test_adds_to_a_growing_set_do_not_keep_a_copy_of_the_set_per_change() -> None:
    r = Replica("a")
    n = 2000
    for i in range(n):
        r.set_add("ns", "set", [b"e%d" % i])
    # Before, each of the n changes held the whole set as it was: n^2 / 2 elements.
    assert _held_items(r.changes) <= INLINE_ITEMS * INLINE_ITEMS
    changes, complete = r.changes_since(0, "ns", limit=n)
    assert complete and len(changes) == n
    # A replayed change of a big value carries the key's newest value.
    assert all(len(c.value.elements) == n and not c.deleted for c in changes[INLINE_ITEMS:])
    assert [c.seq for c in changes] == list(range(1, n + 1))


def test_small_values_are_kept_as_they_were_at_the_change() -> None:
    r = Replica("a")
    r.put_lww("ns", "k", b"one", 1.0)
    r.put_lww("ns", "k", b"two", 2.0)
    r.delete("ns", "k")
    changes, _ = r.changes_since(0, "ns")
    assert [c.value.values for c in changes] == [(b"one",), (b"two",), ()]
    assert [c.deleted for c in changes] == [False, False, True]


def test_a_refilled_log_reads_values_and_deletions_when_handed_out() -> None:
    current = {"k": ReadResult(found=True, values=(b"v",)), "gone": ReadResult(found=False)}
    log = ChangeLog(10, lambda ns, key: current[key], 7, [(6, "ns", "k"), (7, "ns", "gone")])
    assert log.first_seq == 6 and log.last_seq == 7
    got = log.after(5)
    assert [(c.seq, c.key, c.deleted, c.value.values) for c in got] == [
        (6, "k", False, (b"v",)),
        (7, "gone", True, ()),
    ]


def test_is_small_counts_items_and_bytes() -> None:
    assert is_small(ReadResult(found=True, values=(b"x" * 1024,)))
    assert not is_small(ReadResult(found=True, values=(b"x" * 1025,)))
    assert not is_small(ReadResult(found=True, elements=tuple(b"%d" % i for i in range(17))))


def test_changes_nobody_wants_are_not_read() -> None:
    reads: list[str] = []

    def read(ns: str, key: str) -> ReadResult:
        reads.append(key)
        return ReadResult(found=True, values=(b"v",))

    log = ChangeLog(10, read, 2, [(1, "a", "x"), (2, "b", "y")])
    got = log.after(0, lambda ns, key: ns == "b")
    assert [c.key for c in got] == ["y"] and reads == ["y"]

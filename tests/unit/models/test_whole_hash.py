"""``InOrderChunks``: chunks written in any order are hashed in file order, each once."""

from __future__ import annotations

from p2pagent.models.whole_hash import InOrderChunks


def test_in_order_chunks_are_hashed_as_they_come() -> None:
    o = InOrderChunks(3)
    assert o.add(0) == [0]
    assert o.add(1) == [1]
    assert not o.done
    assert o.add(2) == [2]
    assert o.done


def test_early_chunks_wait_for_the_gap_then_follow_in_order() -> None:
    o = InOrderChunks(5)
    assert o.add(3) == []
    assert o.add(1) == []
    assert o.add(0) == [0, 1]
    assert o.add(1) == [] and o.add(3) == []  # repeats add nothing
    assert o.add(2) == [2, 3]
    assert not o.done
    assert o.add(7) == []  # out of range
    assert o.add(4) == [4]
    assert o.done


def test_a_missing_chunk_leaves_it_undone() -> None:
    o = InOrderChunks(3)
    assert o.add(1) == [] and o.add(2) == []
    assert not o.done

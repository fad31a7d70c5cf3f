"""``InOrderChunks``: chunks accepted in any order come out in file order, at most
``max_held`` waiting; past that, or once a chunk is skipped for good, the hash gives up."""

from __future__ import annotations

from p2pagent.models.whole_hash import InOrderChunks


def v(i: int) -> memoryview:
    return memoryview(bytes([i]) * 3)


def test_in_order_chunks_pass_straight_through() -> None:
    o = InOrderChunks(3, max_held=1)
    assert [bytes(x) for x in o.add(0, v(0))] == [bytes(v(0))]
    assert [bytes(x) for x in o.add(1, v(1))] == [bytes(v(1))]
    assert not o.done
    assert len(o.add(2, v(2))) == 1
    assert o.done


def test_out_of_order_chunks_wait_for_the_gap() -> None:
    o = InOrderChunks(4, max_held=2)
    assert o.add(2, v(2)) == []
    assert o.add(1, v(1)) == []
    assert [x[0] for x in o.add(0, v(0))] == [0, 1, 2]
    assert o.add(1, v(1)) == []  # a repeat adds nothing
    assert [x[0] for x in o.add(3, v(3))] == [3]
    assert o.done


def test_gives_up_past_max_held() -> None:
    o = InOrderChunks(10, max_held=2)
    for i in (3, 4, 5):
        assert o.add(i, v(i)) == []
    assert o.failed and not o.done
    assert o.add(0, v(0)) == []  # nothing more once given up
    assert not o.done

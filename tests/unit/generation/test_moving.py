"""When a waiting sequence is offered to peers again (inference/generation/moving.py), with a
fake clock: only after it waited, the oldest first, one attempt at a time with a pause that
doubles while nobody has room, and only to peers that reported room."""

from __future__ import annotations

from p2pagent.inference.generation.moving import MovePacer, destinations
from p2pagent.inference.generation.placement import Load


def test_nothing_is_offered_before_it_waited_the_bound() -> None:
    pacer = MovePacer(after_s=1.0, max_gap_s=8.0)
    waiting = {"a": 10.0, "b": 10.5}
    assert pacer.due(waiting.values()) == 11.0
    assert pacer.pick(waiting, 10.99) is None
    assert pacer.pick(waiting, 11.0) == "a"  # the oldest
    assert pacer.due([]) is None and pacer.pick({}, 100.0) is None


def test_a_failed_attempt_pauses_doubling_up_to_the_cap_and_a_move_resets_it() -> None:
    pacer = MovePacer(after_s=1.0, max_gap_s=4.0)
    waiting = {"a": 0.0}
    pauses = []
    now = 1.0
    for _ in range(5):
        assert pacer.pick(waiting, now) == "a"
        pacer.record(now, moved=False)
        due = pacer.due(waiting.values())
        assert due is not None and pacer.pick(waiting, due - 0.001) is None
        pauses.append(due - now)
        now = due
    assert pauses == [1.0, 2.0, 4.0, 4.0, 4.0]
    pacer.record(now, moved=True)  # a move: the next oldest at once, the pause reset
    waiting = {"b": 0.5}
    assert pacer.pick(waiting, now) == "b"
    pacer.record(now, moved=False)
    assert pacer.due(waiting.values()) == now + 1.0


def test_a_sequence_that_arrived_after_a_failed_attempt_waits_its_own_bound() -> None:
    pacer = MovePacer(after_s=2.0, max_gap_s=8.0)
    pacer.record(0.0, moved=False)  # next attempt not before 2.0
    assert pacer.due([1.5]) == 3.5  # its own wait decides, being later


def test_only_peers_with_room_are_tried_loaded_and_least_busy_first() -> None:
    answers = [
        Load("full", loaded=True, room=False),
        Load("cold", loaded=False, room=True),
        Load("busy", loaded=True, room=True, running=3, max_running=4),
        Load("calm", loaded=True, room=True, running=1, max_running=4),
    ]
    assert destinations(answers) == ["calm", "busy", "cold"]
    assert destinations([Load("full", loaded=True, room=False)]) == []

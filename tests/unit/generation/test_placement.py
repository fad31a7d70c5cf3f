"""The pure placement rules of a generation (inference/generation/placement.py): who is
asked, in which order nodes are tried, and what a failure before or after the first message
becomes."""

from __future__ import annotations

import random

from p2pagent.inference.generation.placement import (
    HERE,
    TAG,
    TAG_OFF,
    Load,
    after_failure,
    attempt_order,
    candidates,
    runs_here_at_once,
    sample,
)
from p2pagent.membership.view import ALIVE, DEAD, SUSPECT, MemberView


def _member(name: str, state: str = ALIVE, **tags: str) -> MemberView:
    return MemberView(name, f"{name}:1", state, 1, tags)


def test_candidates_are_reachable_peers_that_did_not_opt_out() -> None:
    peers = [
        _member("a"),
        _member("b", SUSPECT),
        _member("c", DEAD),
        _member("d", **{TAG: TAG_OFF}),
        _member("e", **{TAG: "on"}),
    ]
    assert candidates(peers) == ["a", "b", "e"]


def test_sample_picks_distinct_peers_and_all_of_few() -> None:
    rng = random.Random(1)
    peers = [f"p{i}" for i in range(10)]
    for _ in range(50):
        picked = sample(peers, 2, rng)
        assert len(picked) == len(set(picked)) == 2
        assert set(picked) <= set(peers)
    assert sorted(sample(["x", "y"], 2, rng)) == ["x", "y"]
    assert sample([], 2, rng) == []
    # Over many draws every peer is asked: no node is a hot spot.
    seen = {p for _ in range(200) for p in sample(peers, 2, rng)}
    assert seen == set(peers)


def test_a_loaded_node_with_room_runs_it_without_asking() -> None:
    assert runs_here_at_once(Load(HERE, loaded=True, room=True))
    assert not runs_here_at_once(Load(HERE, loaded=False, room=True))
    assert not runs_here_at_once(Load(HERE, loaded=True, room=False))


def test_order_prefers_room_then_loaded_then_short_queues_and_here_wins_ties() -> None:
    here = Load(HERE, loaded=True, room=False, running=4, max_running=4)
    answers = [
        Load("cold", loaded=False, room=True),
        Load("warm-busy", loaded=True, room=True, running=3, max_running=4),
        Load("warm-idle", loaded=True, room=True, running=0, max_running=4),
        Load("full", loaded=True, room=False, running=4, max_running=4, waiting=2),
    ]
    # A full peer is never tried (it would refuse); this node is always last-resort.
    assert attempt_order(here, answers) == ["warm-idle", "warm-busy", "cold", HERE]


def test_this_node_wins_a_tie_and_is_tried_once() -> None:
    here = Load(HERE, loaded=False, room=True)
    assert attempt_order(here, [Load("p", loaded=False, room=True)]) == [HERE, "p"]
    assert attempt_order(here, [Load("p", loaded=True, room=True)]) == ["p", HERE]
    assert attempt_order(here, []) == [HERE]
    assert attempt_order(here, [Load(HERE, loaded=True, room=True)]) == [HERE]


def test_a_failure_before_the_first_message_tries_the_next_node() -> None:
    for code in ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "NOT_FOUND", "UNIMPLEMENTED"):
        assert after_failure("p", code, "gone", 0).retry
    # The request's own fault would fail anywhere: it goes to the client as it is.
    bad = after_failure("p", "INVALID_ARGUMENT", "top_p must be in (0, 1]", 0)
    assert not bad.retry and bad.code == "INVALID_ARGUMENT"
    assert bad.message == "top_p must be in (0, 1]"


def test_a_failure_after_a_message_ends_the_stream_with_unavailable() -> None:
    gone = after_failure("n2", "UNAVAILABLE", "connection reset", 5)
    assert not gone.retry
    assert gone.code == "UNAVAILABLE"
    assert "n2" in gone.message and "after 5 messages" in gone.message
    assert "send the request again" in gone.message
    # A model that raised mid-stream keeps its own status and message.
    raised = after_failure("n2", "INTERNAL", "model 'lm': the model raised", 5)
    assert (raised.retry, raised.code) == (False, "INTERNAL")

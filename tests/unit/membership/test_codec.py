"""The membership wire codec: round trips, and every malformed payload is refused cleanly."""

from __future__ import annotations

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pagent.membership import codec
from p2pagent.membership.broadcasts import TransmitQueue, retransmit_limit
from p2pagent.membership.messages import Kind, Message, State, Update

names = st.text(min_size=1, max_size=20)
updates = st.builds(
    Update,
    names,
    st.integers(0, 2**63 - 1),
    st.sampled_from(list(State)),
    st.text(max_size=10),
    st.text(max_size=20),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4),
)
messages = st.builds(
    Message,
    st.sampled_from(list(Kind)),
    names,
    st.text(max_size=30),
    seq=st.integers(0, 2**63 - 1),
    target=st.text(max_size=10),
    target_address=st.text(max_size=10),
    join=st.booleans(),
    updates=st.lists(updates, max_size=5).map(tuple),
    members=st.lists(updates, max_size=5).map(tuple),
)


@given(messages)
def test_round_trip(msg: Message) -> None:
    assert codec.decode(codec.encode(msg)) == msg


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_are_refused_with_malformed_message_only(data: bytes) -> None:
    try:
        codec.decode(data)
    except codec.MalformedMessage:
        pass


@settings(max_examples=300)
@given(
    st.recursive(
        st.none() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.booleans(),
        st.lists,
        max_leaves=20,
    )
)
def test_wrong_shapes_are_refused(obj: object) -> None:
    try:
        codec.decode(msgpack.packb(obj))
    except codec.MalformedMessage:
        pass


def _body(**over: object) -> list[object]:
    body: list[object] = [1, "a", "a:1", 0, "", "", False, [], []]
    names = [
        "kind",
        "src",
        "src_address",
        "seq",
        "target",
        "target_address",
        "join",
        "updates",
        "members",
    ]
    for k, v in over.items():
        body[names.index(k)] = v
    return body


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"kind": 99}, "unknown message kind"),
        ({"src": ""}, "src"),
        ({"seq": -1}, "seq"),
        ({"seq": True}, "seq"),
        ({"join": 1}, "join"),
        ({"updates": [["b", 1, 9, "", "", {}]]}, "unknown member state"),
        ({"updates": [["b", 1, 0, "", "", {"k": 1}]]}, "tags"),
        ({"updates": [["b", 1, 0, "", "", {"k": "v" * 5000}]]}, "exceed"),
        ({"updates": [["b", 1, 0, "", ""]] * 3}, "6 fields"),
        ({"updates": [["b", 1, 0, "", "", {}]] * 300}, "more than"),
        ({"src": "x" * 500}, "src"),
    ],
)
def test_specific_violations_are_named(over: dict[str, object], needle: str) -> None:
    with pytest.raises(codec.MalformedMessage, match=needle):
        codec.decode(msgpack.packb(_body(**over)), max_tags_bytes=512)


def test_transmit_queue_replaces_updates_about_the_same_member() -> None:
    q = TransmitQueue()
    q.put(Update("b", 1, State.ALIVE, "b"))
    q.put(Update("b", 1, State.SUSPECT, "a"))
    assert len(q) == 1
    assert q.take(10, 5) == [Update("b", 1, State.SUSPECT, "a")]


def test_transmit_queue_prefers_fresh_updates_and_skips_the_recipient() -> None:
    q = TransmitQueue()
    for n in "bcd":
        q.put(Update(n, 1, State.ALIVE, n))
    q.take(1, 10)  # d (the newest) has now been sent once
    assert [u.name for u in q.take(2, 10, skip="c")] == ["b", "d"]


def test_retransmit_limit_grows_with_log_n() -> None:
    assert [retransmit_limit(4, n) for n in (1, 9, 10, 99, 100, 1000)] == [4, 4, 8, 8, 12, 16]

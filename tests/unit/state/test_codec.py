"""The wire codec: round trips, versioning, and strict validation of anything a peer sends."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pagent.errors import RemoteProtocolError, UnsupportedVersion
from p2pagent.state.codec import (
    decode_context,
    decode_key_state,
    decode_message,
    encode_context,
    encode_key_state,
    encode_message,
)
from p2pagent.state.messages import DeltaMessage, DigestMessage
from p2pagent.state.replica import Replica

SETTINGS = settings(
    max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _replica() -> Replica:
    r = Replica("a")
    r.on_membership(["a", "b"])
    r.put_lww("ns", "k", b"v", 10.0)
    r.put_mv("ns", "m", b"1")
    r.increment("ns", "c", -4)
    r.set_add("ns", "s", [b"x", b"y"])
    r.set_remove("ns", "s", [b"x"])
    r.delete("ns", "k")
    return r


def test_round_trip_of_every_message() -> None:
    r = _replica()
    push = next(o.message for o in r.take_gossip(1.0))
    assert isinstance(push, DeltaMessage)
    back = decode_message(encode_message(push))
    assert isinstance(back, DeltaMessage)
    assert [d.state.canonical() for d in back.deltas] == [d.state.canonical() for d in push.deltas]
    assert [d.op for d in back.deltas] == [d.op for d in push.deltas]
    digest = r.digest()
    assert decode_message(encode_message(digest)) == digest
    for _, _, ks in r.state.items():
        assert decode_key_state(encode_key_state(ks)).canonical() == ks.canonical()
    assert decode_context(encode_context(r.state.context)) == r.state.context


def test_unknown_version_is_refused_clearly() -> None:
    data = msgpack.packb([2, "d", "a", []])
    with pytest.raises(UnsupportedVersion, match="version 2 is not supported"):
        decode_message(data)


@pytest.mark.parametrize(
    "body",
    [
        # a live dot missing from the context
        [1, "d", "a", [[None, {"a": [1, 1]}, [["ns", "k", 1, ["b", 1, [1, b"v"]]]]]]],
        [1, "d", "a", [[None, {"a": [2, 1]}, []]]],  # inverted range
        [1, "d", "a", [[None, {"a": [1, 3, 2, 5]}, []]]],  # overlapping ranges
        [1, "d", "a", [[None, {"a": [1, 2]}, [["ns", "k", 9, ["a", 1, b"v"]]]]]],  # bad kind
        [1, "d", "a", [[None, {"a": [1, 2]}, [["ns", "k", 3, ["a", 1, [-1, 0]]]]]]],  # bad p
        [1, "d", "a", [[None, {"a": [1, 2]}, [["ns", "k", 4, ["a", 1, b"x", "a", 1, b"x"]]]]]],
        [1, "d", "a", [[["a", 3, 4], {"a": [1, 2]}, []]]],  # op outside context
        [1, "d", "", []],  # empty sender
        [1, "g", "a", {}, {}, b"", "yes"],  # reply not a bool
        [1, "x", "a"],
        [True, "d", "a", []],
        [],
        {"v": 1},
    ],
)
def test_malformed_messages_are_refused(body: object) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(msgpack.packb(body, use_bin_type=True))


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_remote_protocol_errors(data: bytes) -> None:
    try:
        decode_message(data)
    except RemoteProtocolError:
        pass


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.sampled_from([1, "d", "g", "r", "a", "ns"]),
)
_tree = st.recursive(
    _leaf,
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=3), kids, max_size=3)
    ),
    max_leaves=30,
)


@SETTINGS
@given(st.lists(_tree, max_size=6), st.sampled_from(["d", "g", "r"]))
def test_random_structures_raise_only_remote_protocol_errors(rest: list[object], tag: str) -> None:
    data = msgpack.packb([1, tag, "peer", *rest], use_bin_type=True)
    try:
        decode_message(data)
    except RemoteProtocolError:
        pass


@SETTINGS
@given(st.data())
def test_mutated_valid_messages_raise_only_remote_protocol_errors(data: st.DataObject) -> None:
    r = _replica()
    raw = bytearray(encode_message(next(o.message for o in r.take_gossip(1.0))))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        msg = decode_message(bytes(raw))
    except RemoteProtocolError:
        return
    # Whatever decoded is consistent: merging it cannot fail.
    Replica("z").apply(msg, 1.0)


def test_malformed_delta_leaves_the_replica_untouched() -> None:
    r = _replica()
    before = (r.state_digest(), r.state.canonical(), r.changes.last_seq)
    group = ["ns", "k", 1, ["b", 2, [1, b"v"]]]  # dot b:2 is not in the context
    bad = msgpack.packb([1, "d", "b", [[None, {"b": [1, 1]}, [group]]]])
    with pytest.raises(RemoteProtocolError):
        r.apply(decode_message(bad), 2.0)
    assert (r.state_digest(), r.state.canonical(), r.changes.last_seq) == before


def test_state_digest_is_canonical() -> None:
    a, b = Replica("a"), Replica("b")
    a.put_lww("ns", "x", b"1", 1.0)
    a.put_lww("ns", "y", b"2", 1.0)
    b.apply(decode_message(encode_message(DeltaMessage("a", (a._pending[1], a._pending[0])))), 1)
    assert a.state_digest() == b.state_digest()
    b.put_lww("ns", "y", b"3", 2.0)
    assert a.state_digest() != b.state_digest()
    assert isinstance(a.digest(), DigestMessage)

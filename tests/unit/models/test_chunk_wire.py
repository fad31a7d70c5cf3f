"""FetchChunks answers decoded by hand (``chunk_wire``) agree with protobuf, view the received
bytes without copying them, skip fields they do not know, and refuse malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pagent._proto import peer_pb2
from p2pagent.models.chunk_wire import MalformedChunk, decode_chunk, encode_chunk


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


@given(index=st.integers(0, 2**32 - 1), data=st.binary(max_size=5000))
def test_decodes_what_protobuf_encodes(index: int, data: bytes) -> None:
    raw = peer_pb2.FetchChunksResponse(index=index, data=data).SerializeToString()
    chunk = decode_chunk(raw)
    assert (chunk.index, bytes(chunk.data)) == (index, data)


@given(index=st.integers(0, 2**32 - 1), data=st.binary(max_size=5000))
def test_encodes_what_protobuf_encodes(index: int, data: bytes) -> None:
    ours = encode_chunk(index, memoryview(data))
    assert ours == peer_pb2.FetchChunksResponse(index=index, data=data).SerializeToString()
    assert (decode_chunk(ours).index, bytes(decode_chunk(ours).data)) == (index, data)


def test_data_is_a_view_of_the_received_message_not_a_copy() -> None:
    raw = peer_pb2.FetchChunksResponse(index=3, data=b"x" * 1000).SerializeToString()
    assert decode_chunk(raw).data.obj is raw


def test_empty_message_is_chunk_zero_with_no_data() -> None:
    chunk = decode_chunk(b"")
    assert (chunk.index, bytes(chunk.data)) == (0, b"")


def test_unknown_fields_are_skipped_and_the_last_index_wins_as_in_protobuf() -> None:
    raw = (
        _key(15, 0) + _varint(300)  # unknown varint
        + _key(1, 0) + _varint(7)
        + _key(9, 2) + _varint(3) + b"abc"  # unknown bytes
        + _key(2, 2) + _varint(5) + b"hello"
        + _key(10, 1) + b"\x00" * 8  # unknown fixed64
        + _key(11, 5) + b"\x00" * 4  # unknown fixed32
        + _key(1, 0) + _varint(2**32 + 9)  # repeated: last wins, cut to uint32
    )  # fmt: skip
    ours = decode_chunk(raw)
    theirs = peer_pb2.FetchChunksResponse.FromString(raw)
    assert (ours.index, bytes(ours.data)) == (theirs.index, theirs.data) == (9, b"hello")


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (_key(1, 0) + b"\x80", "varint runs past"),
        (_key(2, 2) + _varint(10) + b"short", "runs 5 bytes past"),
        (_key(1, 3), "wire type 3"),
        (_key(1, 7), "wire type 7"),
        (_key(0, 0) + _varint(1), "field number 0"),
        (_key(10, 1) + b"\x00" * 3, "past the end"),
        (_key(1, 0) + b"\xff" * 11 + b"\x01", "longer than 10 bytes"),
    ],
)
def test_malformed_answers_are_refused(raw: bytes, problem: str) -> None:
    with pytest.raises(MalformedChunk, match=problem):
        decode_chunk(raw)

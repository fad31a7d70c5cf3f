"""FetchChunks answers decoded by hand (``chunk_wire``) agree with protobuf, view the received
bytes without copying them, skip fields they do not know, and refuse malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pagent._proto import peer_pb2
from p2pagent.models.chunk_wire import (
    PAD_FIELD,
    ChunkAnswers,
    MalformedChunk,
    _padding,
    decode_chunk,
    encode_chunk,
)
from p2pagent.models.unbuffered import ALIGN


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


def _address(view: memoryview) -> int:
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(view))


@given(
    index=st.integers(0, 2**32 - 1),
    length=st.sampled_from([1, 100, ALIGN - 1, ALIGN, ALIGN + 1, 3 * ALIGN, 70_001]),
    seed=st.integers(0, 255),
)
def test_an_answer_read_in_place_is_what_protobuf_reads(index: int, length: int, seed: int) -> None:
    data = bytes((seed + k) % 251 for k in range(length))
    answers = ChunkAnswers()
    buffer = answers.buffer(index, length)
    assert buffer is not None
    assert _address(buffer) % ALIGN == 0  # where an O_DIRECT read may land
    assert len(buffer) >= -(-length // ALIGN) * ALIGN  # room for a last block's padding
    buffer[:length] = data
    buffer[length:] = b"\xee" * (len(buffer) - length)  # what a read past the end leaves
    answer = answers.encode(index, buffer[:length])
    message = peer_pb2.FetchChunksResponse.FromString(answer)
    assert (message.index, message.data) == (index, data)
    assert (decode_chunk(answer).index, bytes(decode_chunk(answer).data)) == (index, data)
    assert len(answer) - length <= 2 * ALIGN + 32


def test_a_view_read_elsewhere_is_copied_into_the_answer() -> None:
    answers = ChunkAnswers()
    answers.buffer(3, 10)
    assert answers.encode(3, memoryview(b"0123456789")) == encode_chunk(3, b"0123456789")
    assert answers.encode(4, memoryview(b"x")) == encode_chunk(4, b"x")  # never opened
    buffer = answers.buffer(5, 10)
    assert buffer is not None
    buffer[:9] = b"012345678"  # a short read: the file ended early
    assert answers.encode(5, buffer[:9]) == encode_chunk(5, b"012345678")
    assert answers.buffer(6, 0) is None  # nothing to read: encode_chunk's empty answer


def test_padding_fields_of_every_size() -> None:
    for size in [0, *range(2, 5000), 16_386, 16_387, 16_388]:
        pad = _padding(size)
        assert len(pad) == size
        if size:
            assert decode_chunk(pad).index == 0  # skipped: unknown fields only
            assert pad[0] == PAD_FIELD << 3 | 2
    with pytest.raises(ValueError, match="1 byte"):
        _padding(1)


async def test_the_node_s_fetch_chunks_handler_answers_in_place_of_the_generated_one() -> None:
    """Added before ``PeerService`` (as the node adds it) to a server that, like the node's
    (``transport.server``), serves through generic handlers only, the hand-encoded handler
    answers FetchChunks; a protobuf client reads its answers as the generated messages."""
    from collections.abc import AsyncIterator, Callable
    from types import SimpleNamespace

    import grpc

    from p2pagent._proto import peer_pb2_grpc
    from p2pagent.api.models import fetch_chunks_handler
    from p2pagent.api.peer import PeerService
    from p2pagent.transport import server as node_server

    chunks = {0: b"zero" * 100, 7: b"", 9: bytes(range(256)) * 4}
    asked: list[tuple[str, list[int]]] = []

    async def serve_chunks(
        mid: str,
        indices: list[int],
        encode: Callable[[int, memoryview], bytes],
        into: Callable[[int, int], memoryview | None],
    ) -> AsyncIterator[tuple[int, bytes]]:
        asked.append((mid, indices))
        for i in indices:
            buffer = into(i, len(chunks[i]))  # read in place, as the store does
            if buffer is None:
                yield i, encode(i, memoryview(chunks[i]))
                continue
            buffer[: len(chunks[i])] = chunks[i]
            yield i, encode(i, buffer[: len(chunks[i])])

    node = SimpleNamespace(name="n1", models=SimpleNamespace(serve_chunks=serve_chunks))
    server = grpc.aio.server()
    server.add_registered_method_handlers = node_server._generic_only  # type: ignore[method-assign,assignment]
    server.add_generic_rpc_handlers([fetch_chunks_handler(node)])  # type: ignore[arg-type]
    service = PeerService(node)  # type: ignore[arg-type]

    async def not_this_one(*_: object) -> AsyncIterator[peer_pb2.FetchChunksResponse]:
        raise AssertionError("the generated table's FetchChunks answered")
        yield  # an async generator, like the real one

    service.FetchChunks = not_this_one  # type: ignore[method-assign]
    peer_pb2_grpc.add_PeerServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = peer_pb2_grpc.PeerServiceStub(channel)
            request = peer_pb2.FetchChunksRequest(manifest_id="ab" * 32, indices=[9, 0, 7])
            got = [(m.index, m.data) async for m in stub.FetchChunks(request)]
    finally:
        await server.stop(None)
    assert got == [(9, chunks[9]), (0, chunks[0]), (7, chunks[7])]
    assert asked == [("ab" * 32, [9, 0, 7])]

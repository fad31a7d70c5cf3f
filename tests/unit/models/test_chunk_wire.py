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
        mid: str, indices: list[int], encode: Callable[[int, memoryview], bytes]
    ) -> AsyncIterator[tuple[int, bytes]]:
        asked.append((mid, indices))
        for i in indices:
            yield i, encode(i, memoryview(chunks[i]))

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

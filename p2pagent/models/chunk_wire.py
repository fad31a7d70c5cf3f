"""``Peer.FetchChunks`` answers encoded and decoded by hand, with one copy of the chunk's
bytes on the holder and none on the puller.

The generated stub decodes each ``Chunk`` message with protobuf, which copies the chunk's
data into the message and again into a ``bytes`` object when ``chunk.data`` is read: two
copies of every pulled MiB on top of gRPC's own, a tenth of the puller's CPU in profiles.
``Chunk`` has two fields (``uint32 index = 1; bytes data = 2``), so the puller reads the wire
format itself and hands on a ``memoryview`` of the received message (``decode_chunk``, the
call's response deserializer; ``fetch_chunks`` makes that call). The wire format is
unchanged: holders still send ``peer_pb2.FetchChunksResponse``.

Protobuf's rules are kept: fields may come in any order, a repeated scalar field's last value
wins, and fields this version does not know are skipped (a newer holder may add some).
Malformed input raises ``MalformedChunk``.

The holder's side is the same in reverse: building a ``FetchChunksResponse`` copies the
chunk into the message and serializing it copies it again. ``encode_chunk`` writes the same
bytes protobuf would (field 1, then field 2) with one copy, and the holder serves FetchChunks
with a handler whose response serializer passes those bytes on (``api/models.py``).

``ChunkAnswers`` saves that copy too: the chunk is read from disk straight into the answer.
The answer is a ``bytes`` object made uninitialized (``PyBytes_FromStringAndSize(NULL, n)``,
which the C API lets its maker fill before anyone else sees it), laid out so the chunk's
bytes start at an ``ALIGN``-aligned address, as an ``O_DIRECT`` read wants: before them the
index field, a padding field (``PAD_FIELD``, reserved in peer.proto, so every protobuf reader
skips it) and the data field's key and length; after them a second padding field fills the
rest. About 4 KiB of padding a chunk, 0.4 % more bytes on the wire for 1 MiB chunks.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from typing import Any

import grpc

from p2pagent._proto import peer_pb2
from p2pagent.models.unbuffered import ALIGN

#: The method's full name, as the generated stub calls it.
FETCH_CHUNKS = "/p2pagent.v1.PeerService/FetchChunks"

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_INDEX_FIELD, _DATA_FIELD = 1, 2
#: The padding fields' number: reserved in ``FetchChunksResponse`` (peer.proto),
#: so readers skip it as an unknown field.
PAD_FIELD = 15


class MalformedChunk(ValueError):
    """A FetchChunks answer that is not a valid ``Chunk`` message (the holder's fault)."""


@dataclass(frozen=True)
class ChunkView:
    """One received chunk; ``data`` views the received message (no copy)."""

    index: int
    data: memoryview


def decode_chunk(raw: bytes) -> ChunkView:
    """Decodes a serialized ``peer_pb2.FetchChunksResponse``; ``data`` is a view into ``raw``."""
    view = memoryview(raw)
    index = 0
    data = view[0:0]
    pos, end = 0, len(raw)
    while pos < end:
        key, pos = _varint(raw, pos)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise MalformedChunk("field number 0 is not valid protobuf")
        if wire_type == _VARINT:
            value, pos = _varint(raw, pos)
            if field == _INDEX_FIELD:
                index = value & 0xFFFFFFFF  # uint32: protobuf keeps the low 32 bits
        elif wire_type == _LENGTH:
            length, pos = _varint(raw, pos)
            if pos + length > end:
                raise MalformedChunk(f"field {field} runs {pos + length - end} bytes past the end")
            if field == _DATA_FIELD:
                data = view[pos : pos + length]
            pos += length
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        else:
            raise MalformedChunk(f"field {field} has wire type {wire_type}, not one of 0, 1, 2, 5")
    if pos > end:
        raise MalformedChunk("the last field runs past the end of the message")
    return ChunkView(index, data)


def encode_chunk(index: int, data: bytes | memoryview) -> bytes:
    """The serialized ``FetchChunksResponse(index=index, data=data)``, byte for byte what
    protobuf writes (an index of 0 is left out, as protobuf leaves out default values)."""
    head = bytearray()
    if index:
        head.append(_INDEX_FIELD << 3 | _VARINT)
        _put_varint(head, index)
    if len(data):
        head.append(_DATA_FIELD << 3 | _LENGTH)
        _put_varint(head, len(data))
    return b"".join((head, data))


def _bytes_maker() -> Any:
    """``PyBytes_FromStringAndSize`` through ctypes (CPython only; None elsewhere)."""
    if sys.implementation.name != "cpython":
        return None
    make = ctypes.pythonapi.PyBytes_FromStringAndSize
    make.restype = ctypes.py_object
    make.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
    return make


_new_bytes = _bytes_maker()
#: Where a ``bytes`` object's contents start, from its address (CPython's layout:
#: ``PyBytesObject.ob_sval``, the last member; ``__basicsize__`` counts its final NUL).
_BYTES_DATA_OFFSET = bytes.__basicsize__ - 1


def _bytes_address(b: bytes) -> int:
    return id(b) + _BYTES_DATA_OFFSET


class ChunkAnswers:
    """``encode_chunk`` without its copy, for the chunks one FetchChunks call serves (read one
    at a time, never two at once): ``buffer(index, length)`` is the aligned place inside a new
    answer where chunk ``index`` is to be read, and ``encode(index, view)`` returns that answer
    when ``view`` is the chunk read there; any other view (a short read, the test hook's
    corrupted copy) is encoded by ``encode_chunk``. Where ``bytes`` cannot be made this way
    (not CPython) ``buffer`` returns None and every answer is ``encode_chunk``'s."""

    def __init__(self) -> None:
        #: index -> (the answer being built, the writable view from its chunk bytes to its
        #: end, the chunk's length).
        self._open: dict[int, tuple[bytes, memoryview, int]] = {}

    def buffer(self, index: int, length: int) -> memoryview | None:
        if _new_bytes is None or length <= 0:
            return None
        head = _field_head(_INDEX_FIELD, _VARINT, index) if index else b""
        data_key = _field_head(_DATA_FIELD, _LENGTH, length)
        slack = -length % ALIGN  # an O_DIRECT read fills whole blocks
        # Room for the worst alignment of the chunk's start (ALIGN - 1 bytes of padding, one
        # more where the padding must grow a varint) and a tail field of at least 2 bytes.
        total = len(head) + len(data_key) + ALIGN + length + slack + 2
        answer = _new_bytes(None, total)
        base = _bytes_address(answer)
        start = len(head) + len(data_key)
        start += -(base + start) % ALIGN
        pad = start - len(head) - len(data_key)
        if pad == 1:  # no field is one byte long: write the length's varint a byte longer
            data_key = _field_head(_DATA_FIELD, _LENGTH, length, extra=1)
            pad = 0
        view = memoryview((ctypes.c_char * (total - start)).from_address(base + start)).cast("B")
        front = memoryview((ctypes.c_char * start).from_address(base)).cast("B")
        front[:] = head + _padding(pad) + data_key
        front.release()
        self._open[index] = (answer, view, length)
        return view

    def encode(self, index: int, view: memoryview) -> bytes:
        opened = self._open.pop(index, None)
        if opened is None:
            return encode_chunk(index, view)
        answer, buffer, length = opened
        with buffer:
            if view.obj is not buffer.obj or len(view) != length:
                return encode_chunk(index, view)  # not the bytes read in place: copied
            with buffer[length:] as tail:
                tail[:] = _padding(len(tail))
            return answer


def _field_head(field: int, wire_type: int, value: int, extra: int = 0) -> bytes:
    """A field's key and the varint ``value`` (its value, or its length), the varint written
    ``extra`` bytes longer than it needs (protobuf reads such varints as the same number)."""
    out = bytearray([field << 3 | wire_type])
    _put_varint(out, value)
    if extra:
        out[-1] |= 0x80
        out.extend(b"\x80" * (extra - 1))
        out.append(0)
    return bytes(out)


def _padding(size: int) -> bytes:
    """Fields that ``Chunk`` does not have, exactly ``size`` bytes long (0 or at least 2)."""
    if size == 0:
        return b""
    if size < 2:
        raise ValueError(f"no protobuf field is {size} byte long")
    for width in (1, 2, 3):  # the length's varint: up to 16 KiB of padding
        head = _field_head(PAD_FIELD, _LENGTH, size - 1 - width)
        if size - 1 - width >= 0 and len(head) == 1 + width:
            return head + bytes(size - len(head))
    # 130 bytes (or 16,387) fit neither width: an empty field, then the rest.
    return _field_head(PAD_FIELD, _LENGTH, 0) + _padding(size - 2)


def _put_varint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    value = shift = 0
    while True:
        if pos >= len(raw):
            raise MalformedChunk("a varint runs past the end of the message")
        if shift > 63:
            raise MalformedChunk("a varint is longer than 10 bytes")
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def fetch_chunks(
    channel: grpc.aio.Channel, request: peer_pb2.FetchChunksRequest
) -> grpc.aio.UnaryStreamCall[Any, ChunkView]:
    """Starts a FetchChunks call whose answers arrive as ``ChunkView``s."""
    method = channel.unary_stream(
        FETCH_CHUNKS,
        request_serializer=peer_pb2.FetchChunksRequest.SerializeToString,
        response_deserializer=decode_chunk,
    )
    return method(request)

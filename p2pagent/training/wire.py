"""Averaging parts and user parameters on the wire: chunked float streams.

A part travels as a stream of ``AveragePart`` messages, the first carrying the header, each at
most ``CHUNK_BYTES`` of data; the receiver checks the declared size against its limit before
it allocates anything and checks that the chunks add up to it. Values are little-endian
float32, or float16 or 8-bit blocks (``quantize.py``) when the run compresses; decoded to
float32 on arrival.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterator

from p2pagent._proto import agent_pb2, peer_pb2
from p2pagent.errors import InvalidArgument, quoted
from p2pagent.training import quantize
from p2pagent.training.messages import Part, Phase, Vector

#: Data bytes per streamed message.
CHUNK_BYTES = 1024 * 1024
#: Room for a chunk's header fields around its data.
HEADER_BYTES = 4096
#: numpy spellings (strings, so that importing this module does not load numpy).
WIRE_DTYPES = {"float32": "<f4", "float16": "<f2"}
WIRE_ITEMSIZE = {"float32": 4, "float16": 2}
#: Block-wise 8-bit values with a float32 scale per block (``quantize.py``).
INT8 = "int8"
#: The wire dtype of each ``training.compression``.
DTYPE_OF_COMPRESSION = {"none": "float32", "fp16": "float16", "int8": INT8}


def wire_bytes(length: int, dtype: str) -> int:
    """Bytes of data a part of ``length`` values takes on the wire as ``dtype``."""
    if dtype == INT8:
        return quantize.encoded_bytes(length)
    return length * WIRE_ITEMSIZE[dtype]


def encode(data: Vector, dtype: str) -> bytes:
    if dtype == INT8:
        return quantize.encode(data)
    return data.astype(WIRE_DTYPES[dtype], copy=False).tobytes()


def part_messages(part: Part, compression: str) -> Iterator[peer_pb2.AveragePartsRequest]:
    dtype = DTYPE_OF_COMPRESSION[compression]
    raw = encode(part.data, dtype)
    first = peer_pb2.AveragePartsRequest(
        run=part.run,
        round=part.round_no,
        group=part.group,
        phase=part.phase.value,
        slice_index=part.slice_index,
        weight=part.weight,
        spec=part.spec,
        dtype=dtype,
        length=int(part.data.shape[0]),
        data=raw[:CHUNK_BYTES],
    )
    yield first
    for at in range(CHUNK_BYTES, len(raw), CHUNK_BYTES):
        yield peer_pb2.AveragePartsRequest(data=raw[at : at + CHUNK_BYTES])


async def read_part(
    stream: AsyncIterable[peer_pb2.AveragePartsRequest], sender: str, max_bytes: int
) -> Part:
    """The part a peer streamed; ``sender`` is its verified identity's name. Raises
    InvalidArgument for a malformed stream (nothing is kept)."""
    header: peer_pb2.AveragePartsRequest | None = None
    buf = bytearray()
    expected = 0
    async for msg in stream:
        if header is None:
            header = msg
            if msg.dtype not in DTYPE_OF_COMPRESSION.values():
                raise InvalidArgument(
                    f"part dtype {quoted(msg.dtype)} is not one of "
                    f"{', '.join(DTYPE_OF_COMPRESSION.values())}"
                )
            expected = wire_bytes(msg.length, msg.dtype)
            if expected > max_bytes:
                raise InvalidArgument(
                    f"part of {expected} bytes is over this node's limit of {max_bytes} "
                    "(training.max_part_bytes)"
                )
            try:
                phase = Phase(msg.phase)
            except ValueError:
                raise InvalidArgument(f"unknown averaging phase {msg.phase}") from None
            del phase
        if len(buf) + len(msg.data) > expected:
            raise InvalidArgument(f"part data is longer than its declared {expected} bytes")
        buf += msg.data
    if header is None:
        raise InvalidArgument("empty part stream: the first message carries the header")
    if len(buf) != expected:
        raise InvalidArgument(f"part data has {len(buf)} bytes, its header declared {expected}")
    if header.dtype == INT8:
        values = quantize.decode(buf, header.length)
    else:
        import numpy as np  # here, not at the top: only a node that averages needs numpy

        # Read in place (no copy of the bytes); astype makes the one copy the part keeps.
        values = np.frombuffer(buf, dtype=WIRE_DTYPES[header.dtype]).astype(np.float32)
    return Part(
        run=header.run,
        round_no=header.round,
        group=header.group,
        sender=sender,
        phase=Phase(header.phase),
        slice_index=header.slice_index,
        weight=header.weight,
        spec=header.spec,
        data=values,
    )


def vector_chunks(vector: Vector) -> Iterator[bytes]:
    import numpy as np

    raw = np.ascontiguousarray(vector, dtype="<f4").tobytes()
    for at in range(0, max(len(raw), 1), CHUNK_BYTES):
        yield raw[at : at + CHUNK_BYTES]


async def read_average_request(
    stream: AsyncIterable[agent_pb2.AverageRequest], max_bytes: int
) -> tuple[agent_pb2.AverageRequest, Vector]:
    """The header message and the whole float32 vector of an ``Average`` call."""
    header: agent_pb2.AverageRequest | None = None
    buf = bytearray()
    expected = 0
    async for msg in stream:
        if header is None:
            header = msg
            expected = msg.length * 4
            if expected > max_bytes:
                raise InvalidArgument(
                    f"parameters of {expected} bytes are over this node's limit of "
                    f"{max_bytes} (training.max_parameter_bytes)"
                )
        if len(buf) + len(msg.data) > expected:
            raise InvalidArgument(f"parameter data is longer than the declared {expected} bytes")
        buf += msg.data
    if header is None:
        raise InvalidArgument("empty Average stream: the first message carries the header")
    if len(buf) != expected:
        raise InvalidArgument(
            f"parameter data has {len(buf)} bytes, the header declared {expected}"
        )
    import numpy as np

    return header, np.frombuffer(buf, dtype="<f4").astype(np.float32)

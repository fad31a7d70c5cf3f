"""Model uploads built by hand, for tests and benchmarks that drive ``PublishModel`` directly
(``p2pagent.models.upload`` is the real client's side, which reads a file).

Every upload a node accepts carries the SHA-256 of the whole file and metadata it can serve
with; ``noop_metadata`` pairs with ``safetensors_like`` bytes (a safetensors file with no
tensors, then filler), which load as the ``noop`` architecture and pass a node's check.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator

from p2pagent._proto import agent_pb2, common_pb2

#: The safetensors header of ``safetensors_like`` bytes: no tensors.
EMPTY_HEADER = b'{"__metadata__":{}}'


def noop_metadata(features: int = 4) -> agent_pb2.ModelMetadata:
    """Metadata of the ``noop`` architecture (returns its input) with ``features`` columns."""
    port = agent_pb2.ModelMetadata.Port
    return agent_pb2.ModelMetadata(
        inputs=[port(name="input", dtype=common_pb2.DTYPE_FLOAT32, shape=[-1, features])],
        outputs=[port(name="output", dtype=common_pb2.DTYPE_FLOAT32, shape=[-1, features])],
        architecture="noop",
        arch_config=f'{{"features": {features}}}',
    )


def safetensors_like(size: int, seed: int) -> bytes:
    """``size`` bytes that a node loads as a safetensors file with no tensors: the 8-byte
    header length, ``EMPTY_HEADER``, then distinct filler (no two chunks alike)."""
    head = struct.pack("<Q", len(EMPTY_HEADER)) + EMPTY_HEADER
    rng = hashlib.sha256(seed.to_bytes(8, "little"))
    body = bytearray()
    block = os.urandom(1 << 16)
    i = 0
    while len(head) + len(body) < size:
        body += rng.digest() + i.to_bytes(8, "little") + block[40:]
        i += 1
    return (head + bytes(body))[:size]


def publish_requests(
    header: agent_pb2.PublishModelRequest.Header,
    data: bytes,
    piece: int = 1 << 20,
    *,
    digest: bool = True,
) -> Iterator[agent_pb2.PublishModelRequest]:
    """The header (with the SHA-256 of ``data`` unless it has one or ``digest`` is False),
    then ``data`` in pieces."""
    if digest and not header.sha256:
        header = header_with(header, data)
    yield agent_pb2.PublishModelRequest(header=header)
    for i in range(0, len(data), piece):
        yield agent_pb2.PublishModelRequest(data=data[i : i + piece])


def header_with(
    header: agent_pb2.PublishModelRequest.Header, data: bytes
) -> agent_pb2.PublishModelRequest.Header:
    """A copy of ``header`` carrying the SHA-256 of ``data``."""
    out = agent_pb2.PublishModelRequest.Header()
    out.CopyFrom(header)
    out.sha256 = hashlib.sha256(data).hexdigest()
    return out

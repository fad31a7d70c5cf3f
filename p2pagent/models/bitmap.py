"""Compact form of a node's partial holdings: one bit per chunk.

Pullers advertise what they already hold so that other pullers fetch from them too (the swarm
spreads load off the publisher). A set of indices is the in-memory form; this is the form for
gossip: chunk ``i`` is bit ``i % 8`` (least significant first) of byte ``i // 8``. Decoding is
strict, because the bytes come from peers.
"""

from __future__ import annotations

from collections.abc import Iterable

from p2pagent.errors import RemoteProtocolError


def bitmap_length(count: int) -> int:
    return (count + 7) // 8


def encode_bitmap(indices: Iterable[int], count: int) -> bytes:
    """Bitmap of ``indices`` for a version of ``count`` chunks."""
    out = bytearray(bitmap_length(count))
    for i in indices:
        if not 0 <= i < count:
            raise ValueError(f"chunk index {i} out of range for {count} chunks")
        out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def decode_bitmap(data: bytes, count: int) -> frozenset[int]:
    """Indices set in ``data``; RemoteProtocolError if its length or padding is wrong."""
    if len(data) != bitmap_length(count):
        raise RemoteProtocolError(
            f"holdings bitmap is {len(data)} bytes; {count} chunks need {bitmap_length(count)}"
        )
    spare = len(data) * 8 - count
    if spare and data[-1] >> (8 - spare):
        raise RemoteProtocolError("holdings bitmap has bits set past the last chunk")
    return frozenset(
        (byte_i << 3) | bit
        for byte_i, byte in enumerate(data)
        if byte
        for bit in range(8)
        if byte >> bit & 1
    )

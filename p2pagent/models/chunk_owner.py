"""Which of the pullers that know each other owns a chunk (pure): rendezvous hashing of node
name and chunk index, so every node computes the same owner without asking anyone, and a
puller joining or leaving moves only its own share (``transfer.PullPlan`` uses it to split
the chunks that only the publisher has among fellow pullers).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

_MASK64 = (1 << 64) - 1


def owned_by(me: str, pullers: Iterable[str], chunks: Iterable[int], n_chunks: int) -> list[bool]:
    """For each of ``n_chunks`` chunks: whether ``me`` owns it among ``pullers`` (``me``
    included or not); only ``chunks`` are decided, the others are False."""
    seeds = [(_seed(n), n) for n in {*pullers, me}]
    mine = [False] * n_chunks
    for i in chunks:
        mine[i] = max(seeds, key=lambda s: (_rank(s[0], i), s[1]))[1] == me
    return mine


def _seed(node: str) -> int:
    return zlib.crc32(node.encode())


def _rank(seed: int, index: int) -> int:
    """A well-mixed 64-bit value of (node, chunk), the same on every node (splitmix64)."""
    x = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    x ^= x >> 31
    x = (x * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 29)

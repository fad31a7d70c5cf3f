"""8-bit block-wise quantization of parameter parts (``training.compression = "int8"``).

Each block of ``BLOCK`` values travels as one float32 scale (the block's largest magnitude
over 127) and one signed byte per value: a quarter of float32's bytes plus 1.6%. The error
of a value is at most half a step, ``scale / 2``, so a block's largest values keep about
0.4% relative precision and a block of small values keeps its own finer scale (one global
scale would flatten them to zero next to a large weight).

Pure and deterministic: the same floats give the same bytes on every machine (IEEE division
and round-half-to-even), which is what lets every member of a run round the averages alike
and still agree bit for bit.
"""

from __future__ import annotations

from p2pagent.errors import InvalidArgument
from p2pagent.training.messages import Vector

#: Values per block, each block with its own scale.
BLOCK = 256
#: Largest quantized magnitude (symmetric: -127..127, so 0 is exact).
LEVELS = 127


def blocks(length: int) -> int:
    return -(-length // BLOCK)


def encoded_bytes(length: int) -> int:
    """Bytes on the wire for ``length`` values: the scales, then the values."""
    return 4 * blocks(length) + length


def encode(data: Vector) -> bytes:
    """``data`` (float32) as little-endian float32 scales followed by int8 values."""
    import numpy as np  # here, not at the top: only a node that averages needs numpy

    length = int(data.shape[0])
    padded = np.zeros(blocks(length) * BLOCK, dtype=np.float32)
    padded[:length] = data
    grid = padded.reshape(-1, BLOCK)
    scales = (np.abs(grid).max(axis=1) / np.float32(LEVELS)).astype(np.float32)
    # An all-zero block has scale 0; divide by 1 there (its values are 0 anyway).
    safe = np.where(scales > 0, scales, np.float32(1.0))
    q = np.rint(grid / safe[:, None]).clip(-LEVELS, LEVELS).astype(np.int8)
    return bytes(scales.astype("<f4").tobytes()) + bytes(q.reshape(-1)[:length].tobytes())


def decode(raw: bytes | bytearray | memoryview, length: int) -> Vector:
    """The float32 values ``encode`` made ``raw`` of. ``raw`` must be ``encoded_bytes(length)``
    long (the wire reader checks before it calls). Raises InvalidArgument for a negative,
    NaN or infinite scale, which no encoder makes."""
    import numpy as np

    n = blocks(length)
    scales = np.frombuffer(raw, dtype="<f4", count=n).astype(np.float32)
    if not (np.isfinite(scales).all() and (scales >= 0).all()):
        raise InvalidArgument("an int8 part has a negative, NaN or infinite block scale")
    q = np.frombuffer(raw, dtype=np.int8, offset=4 * n, count=length)
    out = q.astype(np.float32)
    out *= np.repeat(scales, BLOCK)[:length]
    return out


def round_trip(data: Vector) -> Vector:
    """``data`` as a receiver sees it after int8 (every member rounds the averages alike)."""
    return decode(encode(data), int(data.shape[0]))

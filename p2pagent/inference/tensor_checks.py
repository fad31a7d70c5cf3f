"""Checks of a wire ``Tensor``'s declared dtype and shape against its bytes, allocating nothing.

Apart from ``tensors`` (which decodes into numpy) so that code which only passes tensors on,
such as a task handed between nodes (``tasks/wire.py``), checks them without importing numpy:
a node that serves no model never loads it (about 140 ms and 86 modules of start-up).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

from p2pagent._proto import common_pb2
from p2pagent.errors import InvalidArgument, quoted
from p2pagent.inference import dtypes
from p2pagent.inference.dtypes import DTypeInfo

#: Most dimensions a received tensor may declare (numpy's own limit is 64).
MAX_RANK = 32


def check_shape(
    shape: Sequence[int],
    max_elements: int,
    what: str,
    *,
    data_bytes: int | None = None,
    itemsize: int = 1,
) -> tuple[tuple[int, ...], int]:
    """Returns (shape, element count); refuses more than ``MAX_RANK`` dimensions, negative
    dims, and counts over ``max_elements`` or over what ``data_bytes`` of ``itemsize``-byte
    elements hold.

    The running product is checked at every step, so a hostile shape like [2**62, 2**62]
    is refused without building a huge integer or allocating anything. A zero dimension
    makes the tensor empty, but the other dimensions are held to the same bound (an empty
    [0, 2**62] could not even be described to numpy).
    """
    if len(shape) > MAX_RANK:
        raise InvalidArgument(f"{what}: {len(shape)} dimensions; at most {MAX_RANK} are accepted")
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"{what}: shape {_short(dims)} has a negative dimension")
    empty = 0 in dims
    held = None if data_bytes is None or empty else data_bytes // itemsize
    count = 1
    for i, d in enumerate(dims):
        count *= d or 1
        if count > max_elements:
            raise InvalidArgument(
                f"{what}: shape {_short(dims)} has more than the {max_elements} elements "
                "allowed per tensor (inference.max_tensor_elements)"
            )
        if held is not None and count > held:
            at_least = "" if i == len(dims) - 1 else "at least "
            raise InvalidArgument(
                f"{what}: shape {_short(dims)} needs {at_least}{count * itemsize} bytes, "
                f"received {data_bytes}"
            )
    return dims, 0 if empty else count


def described(t: common_pb2.Tensor) -> str:
    return f"tensor {quoted(t.name)}" if t.name else "tensor"


def dtype_of(t: common_pb2.Tensor, what: str) -> DTypeInfo:
    info = dtypes.BY_WIRE.get(t.dtype)
    if info is None:
        raise InvalidArgument(
            f"{what}: unknown dtype {t.dtype}; expected one of {', '.join(dtypes.NAMES)}"
        )
    return info


def check_bytes(info: DTypeInfo, shape: tuple[int, ...], count: int, size: int, what: str) -> None:
    expected = count * info.itemsize
    if size != expected:
        raise InvalidArgument(
            f"{what}: {info.name} shape {_short(shape)} needs {expected} bytes, received {size}"
        )


def _short(shape: Iterable[int]) -> str:
    """A shape for an error message: at most its first 8 dimensions."""
    dims = list(shape)
    return str(dims) if len(dims) <= 8 else f"{dims[:8]}... ({len(dims)} dimensions)"


def check_wire(t: common_pb2.Tensor) -> None:
    """Checks a wire tensor's declared dtype and shape against its bytes, allocating nothing:
    for tensors that are passed on rather than decoded (a task's inputs between nodes).

    The element count may not exceed what the bytes hold at any step of the product, so a
    declared [2**31, 2**31] with one byte is refused at the first dimension."""
    what = described(t)
    info = dtype_of(t, what)
    size = len(t.data)
    shape, count = check_shape(t.shape, sys.maxsize, what, data_bytes=size, itemsize=info.itemsize)
    check_bytes(info, shape, count, size, what)

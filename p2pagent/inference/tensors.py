"""Wire ``Tensor`` <-> ``torch.Tensor``: dtype, shape and raw little-endian bytes.

Everything about a received tensor is checked before memory is allocated for it: the dtype
is known, no dimension is negative, the element count is under the configured maximum, and
the byte length is exactly ``elements * itemsize``. Decoding makes one copy (protobuf bytes
are immutable, and ``torch.frombuffer`` on a read-only buffer would alias memory torch
believes it may write); the tensor is then a view of that copy, with no further copies.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

import torch

from p2pagent._proto import common_pb2
from p2pagent.errors import InvalidArgument
from p2pagent.inference import dtypes

_LITTLE = sys.byteorder == "little"


def check_shape(shape: Iterable[int], max_elements: int, what: str) -> tuple[tuple[int, ...], int]:
    """Returns (shape, element count); refuses negative dims and counts over ``max_elements``.

    The running product is checked at every step, so a hostile shape like [2**62, 2**62]
    is refused without building a huge integer or allocating anything.
    """
    dims = tuple(int(d) for d in shape)
    count = 1
    for d in dims:
        if d < 0:
            raise InvalidArgument(f"{what}: shape {list(dims)} has a negative dimension")
        count *= d
        if count > max_elements:
            raise InvalidArgument(
                f"{what}: shape {list(dims)} has more than the {max_elements} elements "
                "allowed per tensor (inference.max_tensor_elements)"
            )
    return dims, count


def from_proto(t: common_pb2.Tensor, max_elements: int) -> torch.Tensor:
    """Decodes one wire tensor; raises InvalidArgument naming the tensor and what is wrong."""
    what = f"tensor {t.name!r}" if t.name else "tensor"
    info = dtypes.BY_WIRE.get(t.dtype)
    if info is None:
        raise InvalidArgument(
            f"{what}: unknown dtype {t.dtype}; expected one of {', '.join(dtypes.NAMES)}"
        )
    shape, count = check_shape(t.shape, max_elements, what)
    expected = count * info.itemsize
    if len(t.data) != expected:
        raise InvalidArgument(
            f"{what}: {info.name} shape {list(shape)} needs {expected} bytes, "
            f"received {len(t.data)}"
        )
    if count == 0:
        return torch.empty(shape, dtype=info.torch)
    raw = torch.frombuffer(bytearray(t.data), dtype=torch.uint8)
    if info.torch is torch.bool and bool((raw > 1).any()):
        # Any byte but 0/1 in a bool tensor is undefined behaviour in torch kernels.
        raise InvalidArgument(f"{what}: bool data must be bytes 0 or 1")
    if not _LITTLE and info.itemsize > 1:
        raw = raw.view(-1, info.itemsize).flip(1).reshape(-1)
    return raw.view(info.torch).view(shape)


def to_proto(name: str, tensor: torch.Tensor) -> common_pb2.Tensor:
    """Encodes one tensor (any device, any layout) as little-endian row-major bytes."""
    info = dtypes.by_torch(tensor.dtype, f"output {name!r}")
    t = tensor.detach().to("cpu").contiguous()
    raw = t.reshape(-1).view(torch.uint8)
    if not _LITTLE and info.itemsize > 1:
        raw = raw.view(-1, info.itemsize).flip(1).reshape(-1)
    return common_pb2.Tensor(
        name=name,
        dtype=info.wire,  # type: ignore[arg-type]  # an enum value held as int
        shape=list(t.shape),
        data=raw.numpy().tobytes(),
    )


def many_from_proto(
    tensors: Iterable[common_pb2.Tensor], max_elements: int
) -> dict[str, torch.Tensor] | list[torch.Tensor]:
    """Decodes request inputs: a dict when every tensor is named, a list when none is.

    A mix of named and unnamed tensors, or a repeated name, is ambiguous and refused.
    """
    items = list(tensors)
    named = [t.name for t in items if t.name]
    if not named:
        return [from_proto(t, max_elements) for t in items]
    if len(named) != len(items):
        raise InvalidArgument("either name every input tensor or none of them")
    out: dict[str, torch.Tensor] = {}
    for t in items:
        if t.name in out:
            raise InvalidArgument(f"input {t.name!r} is given twice")
        out[t.name] = from_proto(t, max_elements)
    return out


def many_to_proto(outputs: Mapping[str, torch.Tensor]) -> list[common_pb2.Tensor]:
    return [to_proto(name, t) for name, t in outputs.items()]

"""Wire ``Tensor`` <-> host arrays and ``torch.Tensor``: dtype, shape, little-endian bytes.

Everything about a received tensor is checked before memory is allocated for it: the dtype
is known, no dimension is negative, the element count is under the configured maximum, and
the byte length is exactly ``elements * itemsize``.

Decoding (``decode``, ``many_decode``) needs numpy only, never torch: a ``HostTensor`` is a
read-only numpy view of the message's bytes, no copy at all. The one copy happens when the
engine's worker concatenates a batch (or ``to_torch`` copies a lone tensor), so the request
path on the event loop neither imports torch nor allocates tensor memory. ``from_proto`` and
``many_from_proto`` decode straight to torch for callers that want tensors (and have torch).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from p2pagent._proto import common_pb2
from p2pagent.errors import InvalidArgument, quoted
from p2pagent.inference import dtypes
from p2pagent.inference.dtypes import DTypeInfo
from p2pagent.inference.tensor_checks import (
    check_bytes,
    check_shape,
    described,
    dtype_of,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

_LITTLE = sys.byteorder == "little"


@dataclass(frozen=True, eq=False)
class HostTensor:
    """A validated tensor in host memory, held by numpy (torch is not needed to hold one).

    ``array`` has the numpy storage type of ``dtype`` in native byte order and may be
    read-only (a view of received bytes): never write to it.
    """

    dtype: DTypeInfo
    array: np.ndarray[Any, Any]

    @property
    def shape(self) -> tuple[int, ...]:
        shape: tuple[int, ...] = self.array.shape
        return shape

    def to_torch(self) -> torch.Tensor:
        """A torch tensor owning a writable copy of the data."""
        import numpy as np

        return host_to_torch(self.dtype, np.array(self.array, copy=True))


def host_to_torch(info: DTypeInfo, array: np.ndarray[Any, Any]) -> torch.Tensor:
    """Wraps a writable, native-order numpy array as a torch tensor without copying."""
    import torch

    t = torch.from_numpy(array)
    return t if info.numpy_is_exact else t.view(info.torch_dtype)


def decode(t: common_pb2.Tensor, max_elements: int) -> HostTensor:
    """Decodes one wire tensor without copying; raises InvalidArgument naming what is wrong."""
    # Imported here, not at the top: a node that serves no model (and the tasks layer, which
    # passes tensors on undecoded) never loads numpy. Once loaded this is a dict lookup.
    import numpy as np

    data = t.data
    key = (t.dtype, tuple(t.shape), len(data), max_elements)
    layout = _CHECKED.get(key)
    if layout is None:
        layout = _checked_layout(t, len(data), max_elements)
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()  # many different layouts: start over rather than grow
        _CHECKED[key] = layout
    info, shape, count = layout
    if info.name == "bool" and count and np.frombuffer(data, np.uint8).max() > 1:
        # Any byte but 0/1 in a bool tensor is undefined behaviour in torch kernels.
        raise InvalidArgument(f"{described(t)}: bool data must be bytes 0 or 1")
    array = np.frombuffer(data, info.numpy).reshape(shape)
    if not _LITTLE and info.itemsize > 1:
        array = array.astype(array.dtype.newbyteorder("="))
    return HostTensor(info, array)


#: Layouts (wire dtype, shape, byte length, element bound) already checked, with what the
#: checks found: a server's requests share a few layouts, and checking one was most of a
#: decode (the message's name, dtype, each dimension, the product, the byte count). The
#: checks depend on nothing else but a bool tensor's bytes, which are checked every time.
_CHECKED: dict[tuple[int, tuple[int, ...], int, int], tuple[DTypeInfo, tuple[int, ...], int]] = {}
_CHECKED_MAX = 256


def _checked_layout(
    t: common_pb2.Tensor, size: int, max_elements: int
) -> tuple[DTypeInfo, tuple[int, ...], int]:
    """(dtype, shape, element count) of ``t``; raises InvalidArgument naming what is wrong."""
    what = described(t)
    info = dtype_of(t, what)
    shape, count = check_shape(t.shape, max_elements, what, data_bytes=size, itemsize=info.itemsize)
    check_bytes(info, shape, count, size, what)
    return info, shape, count


def many_decode(
    tensors: Iterable[common_pb2.Tensor], max_elements: int
) -> dict[str, HostTensor] | list[HostTensor]:
    """Decodes request inputs: a dict when every tensor is named, a list when none is.

    A mix of named and unnamed tensors, or a repeated name, is ambiguous and refused.
    """
    items = list(tensors)
    named = [t.name for t in items if t.name]
    if not named:
        return [decode(t, max_elements) for t in items]
    if len(named) != len(items):
        raise InvalidArgument("either name every input tensor or none of them")
    out: dict[str, HostTensor] = {}
    for t in items:
        if t.name in out:
            raise InvalidArgument(f"input {quoted(t.name)} is given twice")
        out[t.name] = decode(t, max_elements)
    return out


def from_proto(t: common_pb2.Tensor, max_elements: int) -> torch.Tensor:
    """Decodes one wire tensor to a torch tensor that owns a copy of the data."""
    return decode(t, max_elements).to_torch()


def many_from_proto(
    tensors: Iterable[common_pb2.Tensor], max_elements: int
) -> dict[str, torch.Tensor] | list[torch.Tensor]:
    """``many_decode``, as torch tensors (imports torch: prefer ``many_decode`` for the
    engine, which takes host tensors as they are)."""
    decoded = many_decode(tensors, max_elements)
    if isinstance(decoded, dict):
        return {name: h.to_torch() for name, h in decoded.items()}
    return [h.to_torch() for h in decoded]


def to_proto(name: str, tensor: torch.Tensor) -> common_pb2.Tensor:
    """Encodes one tensor (any device, any layout) as little-endian row-major bytes."""
    info = dtypes.of_torch(tensor.dtype) or dtypes.by_torch(tensor.dtype, f"output {name!r}")
    if info.numpy_is_exact:
        # The common case, once per output of every request: a CPU tensor outside autograd
        # is a numpy view as it is (``tobytes`` writes row-major whatever its strides), so
        # the checks below are spared. torch refuses the others (on a device, requiring
        # grad) with an error, and they take the steps below.
        try:
            array = tensor.numpy()
        except (RuntimeError, TypeError):
            pass
        else:
            return _tensor_proto(name, info, array)
    t = tensor
    # Each step only where needed: this runs once per output of every request.
    if t.requires_grad:
        t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    if not t.is_contiguous():
        t = t.contiguous()
    shape = list(t.shape)
    if not info.numpy_is_exact:
        import torch

        t = t.view(torch.int16)
    return _tensor_proto(name, info, t.numpy(), shape)


def _tensor_proto(
    name: str, info: DTypeInfo, array: np.ndarray[Any, Any], shape: list[int] | None = None
) -> common_pb2.Tensor:
    """The wire tensor of a host array (``shape``: the tensor's, where the array is a view
    of it under another dtype)."""
    if not _LITTLE and info.itemsize > 1:
        array = array.astype(array.dtype.newbyteorder("<"))
    return common_pb2.Tensor(
        name=name,
        dtype=info.wire,  # type: ignore[arg-type]  # an enum value held as int
        shape=list(array.shape) if shape is None else shape,
        data=array.tobytes(),
    )


def many_to_proto(outputs: Mapping[str, torch.Tensor]) -> list[common_pb2.Tensor]:
    return [to_proto(name, t) for name, t in outputs.items()]

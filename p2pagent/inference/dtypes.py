"""The element types the inference layer accepts, in each of their spellings.

One table so the wire enum, model metadata (JSON names), safetensors codes, numpy storage
types and torch dtypes cannot drift apart. Anything not listed here is refused everywhere.

Torch-free on purpose: wire validation, model metadata and the CLI use this table without
importing torch (about 200 MB of RSS and seconds of start-up); only ``DTypeInfo.torch_dtype``
imports it, and only code that already holds torch tensors calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pagent._proto import common_pb2
from p2pagent.errors import InvalidArgument

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DTypeInfo:
    name: str  # metadata / JSON spelling, and the torch attribute name (torch.float32...)
    wire: int  # common_pb2.Dtype value
    safetensors: str  # code in a safetensors header
    #: numpy type holding the elements, little-endian. numpy has no bfloat16: its bits are
    #: held as int16 and reinterpreted (``Tensor.view``) once they reach torch.
    numpy: str
    itemsize: int

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        dtype: torch.dtype = getattr(torch, self.name)
        return dtype

    @property
    def numpy_is_exact(self) -> bool:
        """False where the numpy type only holds the bits (bfloat16)."""
        return self.name != "bfloat16"


_TABLE = (
    DTypeInfo("float32", common_pb2.DTYPE_FLOAT32, "F32", "<f4", 4),
    DTypeInfo("float16", common_pb2.DTYPE_FLOAT16, "F16", "<f2", 2),
    DTypeInfo("bfloat16", common_pb2.DTYPE_BFLOAT16, "BF16", "<i2", 2),
    DTypeInfo("float64", common_pb2.DTYPE_FLOAT64, "F64", "<f8", 8),
    DTypeInfo("int64", common_pb2.DTYPE_INT64, "I64", "<i8", 8),
    DTypeInfo("int32", common_pb2.DTYPE_INT32, "I32", "<i4", 4),
    DTypeInfo("int16", common_pb2.DTYPE_INT16, "I16", "<i2", 2),
    DTypeInfo("int8", common_pb2.DTYPE_INT8, "I8", "i1", 1),
    DTypeInfo("uint8", common_pb2.DTYPE_UINT8, "U8", "u1", 1),
    DTypeInfo("bool", common_pb2.DTYPE_BOOL, "BOOL", "?", 1),
)
BY_NAME = {d.name: d for d in _TABLE}
BY_WIRE = {d.wire: d for d in _TABLE}
BY_SAFETENSORS = {d.safetensors: d for d in _TABLE}
NAMES = tuple(BY_NAME)


def by_name(name: str, what: str) -> DTypeInfo:
    info = BY_NAME.get(name)
    if info is None:
        raise InvalidArgument(f"{what}: unknown dtype {name!r}; expected one of {', '.join(NAMES)}")
    return info


#: torch dtype -> entry, filled as dtypes are met (no torch import needed to build it).
_BY_TORCH: dict[object, DTypeInfo | None] = {}


def of_torch(dtype: object) -> DTypeInfo | None:
    """The entry for a torch dtype (``torch.float32`` prints as "torch.float32"), or None."""
    try:
        return _BY_TORCH[dtype]
    except KeyError:
        info = _BY_TORCH[dtype] = BY_NAME.get(str(dtype).removeprefix("torch."))
        return info


def by_torch(dtype: torch.dtype, what: str) -> DTypeInfo:
    info = of_torch(dtype)
    if info is None:
        raise InvalidArgument(
            f"{what}: dtype {dtype} is not supported; expected one of {', '.join(NAMES)}"
        )
    return info

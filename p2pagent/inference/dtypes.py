"""The element types the inference layer accepts, in each of their spellings.

One table so the wire enum, model metadata (JSON names), safetensors codes and torch dtypes
cannot drift apart. Anything not listed here is refused everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from p2pagent._proto import common_pb2
from p2pagent.errors import InvalidArgument


@dataclass(frozen=True)
class DTypeInfo:
    name: str  # metadata / JSON spelling
    wire: int  # common_pb2.DType value
    safetensors: str  # code in a safetensors header
    torch: torch.dtype
    itemsize: int


_TABLE = (
    DTypeInfo("float32", common_pb2.FLOAT32, "F32", torch.float32, 4),
    DTypeInfo("float16", common_pb2.FLOAT16, "F16", torch.float16, 2),
    DTypeInfo("bfloat16", common_pb2.BFLOAT16, "BF16", torch.bfloat16, 2),
    DTypeInfo("float64", common_pb2.FLOAT64, "F64", torch.float64, 8),
    DTypeInfo("int64", common_pb2.INT64, "I64", torch.int64, 8),
    DTypeInfo("int32", common_pb2.INT32, "I32", torch.int32, 4),
    DTypeInfo("int16", common_pb2.INT16, "I16", torch.int16, 2),
    DTypeInfo("int8", common_pb2.INT8, "I8", torch.int8, 1),
    DTypeInfo("uint8", common_pb2.UINT8, "U8", torch.uint8, 1),
    DTypeInfo("bool", common_pb2.BOOL, "BOOL", torch.bool, 1),
)
BY_NAME = {d.name: d for d in _TABLE}
BY_WIRE = {d.wire: d for d in _TABLE}
BY_SAFETENSORS = {d.safetensors: d for d in _TABLE}
BY_TORCH = {d.torch: d for d in _TABLE}
NAMES = tuple(BY_NAME)


def by_name(name: str, what: str) -> DTypeInfo:
    info = BY_NAME.get(name)
    if info is None:
        raise InvalidArgument(f"{what}: unknown dtype {name!r}; expected one of {', '.join(NAMES)}")
    return info


def by_torch(dtype: torch.dtype, what: str) -> DTypeInfo:
    info = BY_TORCH.get(dtype)
    if info is None:
        raise InvalidArgument(
            f"{what}: dtype {dtype} is not supported; expected one of {', '.join(NAMES)}"
        )
    return info

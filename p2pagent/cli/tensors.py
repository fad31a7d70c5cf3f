"""Tensors for p2pagentctl, with numpy (importing torch would make every command slow).

Input files: a ``.npy`` file (one tensor), a ``.npz`` file (several, by name; token ids and
an attention mask, say), or JSON: a nested list (one float32 tensor), or an object mapping
input names to nested lists or to ``{"dtype": "int64", "data": [...]}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from p2pagent._proto import common_pb2
from p2pagent.errors import InvalidArgument

_NP: dict[common_pb2.Dtype, str] = {
    common_pb2.DTYPE_FLOAT32: "<f4",
    common_pb2.DTYPE_FLOAT16: "<f2",
    common_pb2.DTYPE_FLOAT64: "<f8",
    common_pb2.DTYPE_INT64: "<i8",
    common_pb2.DTYPE_INT32: "<i4",
    common_pb2.DTYPE_INT16: "<i2",
    common_pb2.DTYPE_INT8: "i1",
    common_pb2.DTYPE_UINT8: "u1",
    common_pb2.DTYPE_BOOL: "?",
}
_BY_NAME = {
    "float32": common_pb2.DTYPE_FLOAT32,
    "float16": common_pb2.DTYPE_FLOAT16,
    "float64": common_pb2.DTYPE_FLOAT64,
    "int64": common_pb2.DTYPE_INT64,
    "int32": common_pb2.DTYPE_INT32,
    "int16": common_pb2.DTYPE_INT16,
    "int8": common_pb2.DTYPE_INT8,
    "uint8": common_pb2.DTYPE_UINT8,
    "bool": common_pb2.DTYPE_BOOL,
}


def to_proto(name: str, array: np.ndarray[Any, Any]) -> common_pb2.Tensor:
    for dtype, np_name in _NP.items():
        if array.dtype == np.dtype(np_name):
            data = np.ascontiguousarray(array.astype(np.dtype(np_name).newbyteorder("<")))
            return common_pb2.Tensor(
                name=name, dtype=dtype, shape=list(array.shape), data=data.tobytes()
            )
    raise InvalidArgument(f"input {name!r}: dtype {array.dtype} is not supported on the wire")


def from_proto(t: common_pb2.Tensor) -> np.ndarray[Any, Any]:
    shape = tuple(int(d) for d in t.shape)
    if t.dtype == common_pb2.DTYPE_BFLOAT16:
        raw = np.frombuffer(t.data, dtype="<u2").astype("<u4") << 16
        return raw.view("<f4").reshape(shape)
    np_name = _NP.get(t.dtype)
    if np_name is None:
        raise InvalidArgument(f"output {t.name!r} has an unknown dtype {t.dtype}")
    return np.frombuffer(t.data, dtype=np_name).reshape(shape)


def read_inputs(path: str, default_name: str = "input") -> list[common_pb2.Tensor]:
    p = Path(path)
    try:
        if p.suffix == ".npy":
            return [to_proto(default_name, np.load(p, allow_pickle=False))]
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as archive:
                if not archive.files:
                    raise InvalidArgument(f"{path} holds no arrays")
                return [to_proto(name, archive[name]) for name in archive.files]
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise InvalidArgument(f"input file {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"cannot read input file {path}: {e}") from None
    if isinstance(doc, list):
        return [to_proto(default_name, _array(doc, "float32", default_name))]
    if isinstance(doc, dict):
        out = []
        for name, value in doc.items():
            if isinstance(value, dict):
                out.append(to_proto(name, _array(value.get("data"), value.get("dtype"), name)))
            else:
                out.append(to_proto(name, _array(value, "float32", name)))
        return out
    raise InvalidArgument(f"{path}: JSON input must be a list or an object of named inputs")


def _array(data: Any, dtype: Any, name: str) -> np.ndarray[Any, Any]:
    if dtype not in _BY_NAME:
        raise InvalidArgument(
            f"input {name!r}: unknown dtype {dtype!r}; use one of {list(_BY_NAME)}"
        )
    try:
        return np.asarray(data, dtype=np.dtype(_NP[_BY_NAME[dtype]]))
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"input {name!r}: not a rectangular array of numbers: {e}") from None


def save_outputs(path: Path, outputs: list[common_pb2.Tensor]) -> None:
    """Every output into ``path``: an ``.npz`` by output name, or the one output as ``.npy``."""
    arrays = {t.name or f"output{i}": from_proto(t) for i, t in enumerate(outputs)}
    if path.suffix == ".npz":
        np.savez(path, allow_pickle=False, **arrays)
    elif len(arrays) == 1:
        np.save(path, next(iter(arrays.values())), allow_pickle=False)
    else:
        raise InvalidArgument(
            f"the model has {len(arrays)} outputs {sorted(arrays)}: give --output FILE.npz"
        )


def describe(t: common_pb2.Tensor, full: bool = False, task: str = "") -> dict[str, Any]:
    arr = from_proto(t)
    dtype = common_pb2.Dtype.Name(t.dtype).removeprefix("DTYPE_").lower()
    doc: dict[str, Any] = {"name": t.name, "dtype": dtype, "shape": list(arr.shape)}
    if full or arr.size <= 64:
        doc["data"] = arr.tolist()
    else:
        flat = arr.reshape(-1)
        doc["data_head"] = flat[:16].tolist()
        doc["size"] = int(arr.size)
    if task == "embedding":
        # Vectors, not scores: their argmax means nothing; their length says if normalised.
        doc["norm"] = [
            round(float(x), 6) for x in np.linalg.norm(arr.reshape(len(arr), -1), axis=1)
        ]
    elif arr.ndim == 2 and arr.dtype.kind == "f" and arr.shape[1] > 1:
        doc["argmax"] = arr.argmax(axis=1).tolist()
    return doc

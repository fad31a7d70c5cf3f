"""Tensors between the daemon and the model worker: batches into shared memory, outputs out.

The daemon writes a batch's inputs straight into its shared region: the concatenation of the
requests' rows is that write, so a wire tensor's bytes are copied once on their way to the
worker, as they are on their way to an in-process forward pass. Outputs are copied out of the
worker's region (which the next batch overwrites) after every reference in the answer has
been checked against the region's bounds: the worker runs a publisher's code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from p2pagent.errors import InvalidArgument
from p2pagent.inference import dtypes, worker_wire
from p2pagent.inference.tensors import HostTensor, host_to_torch
from p2pagent.inference.worker_wire import ChannelClosed, Region, TensorRef

if TYPE_CHECKING:
    import torch

    from p2pagent.inference.spec import InputTensor


def input_layout(
    parts: Sequence[Sequence[InputTensor]], batchable: bool, rows: int
) -> tuple[list[TensorRef], int]:
    """Where each input of the batch goes in the region, and the bytes it needs."""
    joined = batchable and len(parts) > 1
    specs = []
    for first in parts[0]:  # the group's requests share dtypes and trailing dimensions
        shape = first.shape  # ints (a numpy shape, a torch.Size)
        specs.append((_dtype_of(first), (rows, *shape[1:]) if joined else tuple(shape)))
    return worker_wire.layout(specs)


def write_inputs(
    region: Region, refs: list[TensorRef], parts: Sequence[Sequence[InputTensor]]
) -> None:
    if len(parts) == 1:  # a batch of one request (most, where requests come one by one)
        for ref, t in zip(refs, parts[0]):
            if ref.nbytes and not _copy_whole(region, ref, t):
                _concatenate_into(region, ref, [t])
        return
    for ref, col in zip(refs, zip(*parts)):
        if ref.nbytes:
            _concatenate_into(region, ref, col)


def _copy_whole(region: Region, ref: TensorRef, t: InputTensor) -> bool:
    """One wire tensor's bytes into the region as they are, where they already are the
    input's (row-major, its dtype): one copy, no arrays built. False: the general way."""
    if not isinstance(t, HostTensor):
        return False
    array = t.array
    if not array.flags.c_contiguous or array.dtype != _numpy_dtype(ref.dtype):
        return False
    region.map[ref.offset : ref.offset + ref.nbytes] = array  # type: ignore[call-overload]  # its buffer
    return True


def read_outputs(region: Region | None, raw: Any) -> list[torch.Tensor]:
    """The outputs an answer refers to, checked and copied; ChannelClosed if malformed.

    The views over the region an answer's list of references makes are kept on the region,
    under that list (``WorkerProcess`` hands over the same decoded list for an answer whose
    bytes it has seen: the same output layout), so a batch shaped like an earlier one
    copies its outputs out without checking and wrapping them again."""
    if region is not None:
        plan = region.reads.get(id(raw))
        if plan is not None and plan[0] is raw:
            return [v.clone() if v is not None else _empty(ref) for ref, v in plan[1]]
    if not isinstance(raw, list) or len(raw) > worker_wire.MAX_OUTPUTS:
        raise ChannelClosed("an answer without a list of outputs")
    if raw and region is None:
        raise ChannelClosed("outputs without an output region")
    if region is None:
        return []
    refs = [TensorRef.checked(r, region.size, "output") for r in raw]
    views = [(ref, _view(region, ref) if ref.nbytes else None) for ref in refs]
    if len(region.reads) >= 64:
        region.reads.clear()
    region.reads[id(raw)] = (raw, views)
    return [v.clone() if v is not None else _empty(ref) for ref, v in views]


#: numpy dtypes by name, made once: numpy parses a dtype given as a string on every call.
_NUMPY: dict[str, Any] = {}


def _numpy_dtype(info: dtypes.DTypeInfo) -> Any:
    dtype = _NUMPY.get(info.name)
    if dtype is None:
        import numpy as np

        dtype = _NUMPY[info.name] = np.dtype(info.numpy)
    return dtype


def _dtype_of(t: InputTensor) -> dtypes.DTypeInfo:
    if isinstance(t, HostTensor):
        return t.dtype
    info = dtypes.BY_NAME.get(str(t.dtype).removeprefix("torch."))
    if info is None:
        raise InvalidArgument(f"tensors of dtype {t.dtype} cannot be sent to the model worker")
    return info


def _concatenate_into(region: Region, ref: TensorRef, column: Sequence[InputTensor]) -> None:
    """Joins one input's tensors along dimension 0 straight into the shared region: the
    only copy a wire tensor's bytes get on their way to the worker (as in-process)."""
    import numpy as np  # here, not at the top: a node serving no model never loads numpy

    if all(isinstance(t, HostTensor) for t in column):
        # Row-major tensors of one dtype and the same trailing shape (the batch's group)
        # joined along dimension 0 are their bytes one after the other: copied as bytes,
        # without building arrays over the region for each batch.
        arrays = [np.ascontiguousarray(t.array) for t in column]  # type: ignore[union-attr]
        dtype = _numpy_dtype(ref.dtype)
        same = all(a.dtype == dtype for a in arrays)
        if same and sum(a.nbytes for a in arrays) == ref.nbytes:
            with memoryview(region.map) as dst:
                at = ref.offset
                for a in (a for a in arrays if a.nbytes):  # (memoryview casts no empty one)
                    with a.data.cast("B") as raw:
                        dst[at : at + raw.nbytes] = raw
                        at += raw.nbytes
            return
        joined = np.ndarray(ref.shape, dtype=dtype, buffer=region.map, offset=ref.offset)
        np.concatenate(arrays, out=joined)
        del joined
        return
    import torch

    count = ref.nbytes // ref.dtype.itemsize
    view = torch.frombuffer(region.map, dtype=ref.dtype.torch_dtype, count=count, offset=ref.offset)
    tensors = [
        host_to_torch(t.dtype, np.array(t.array)) if isinstance(t, HostTensor) else t.cpu()
        for t in column
    ]
    torch.cat(tensors, out=view.view(ref.shape))
    del view


def _view(region: Region, ref: TensorRef) -> torch.Tensor:
    """A tensor over an output's bytes in the worker's region (no copy: the caller copies
    it out, the next batch overwrites it)."""
    import torch

    count = ref.nbytes // ref.dtype.itemsize
    view = torch.frombuffer(region.map, dtype=ref.dtype.torch_dtype, count=count, offset=ref.offset)
    return view.view(ref.shape)


def _empty(ref: TensorRef) -> torch.Tensor:
    import torch

    return torch.empty(ref.shape, dtype=ref.dtype.torch_dtype)

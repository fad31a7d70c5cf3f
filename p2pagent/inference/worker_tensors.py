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
    specs = []
    for col in zip(*parts):
        first = col[0]
        shape = (rows, *first.shape[1:]) if batchable and len(col) > 1 else tuple(first.shape)
        specs.append((_dtype_of(first), tuple(int(d) for d in shape)))
    return worker_wire.layout(specs)


def write_inputs(
    region: Region, refs: list[TensorRef], parts: Sequence[Sequence[InputTensor]]
) -> None:
    for ref, col in zip(refs, zip(*parts)):
        if ref.nbytes:
            _concatenate_into(region, ref, col)


def read_outputs(region: Region | None, raw: Any) -> list[torch.Tensor]:
    """The outputs an answer refers to, checked and copied; ChannelClosed if malformed."""
    if not isinstance(raw, list) or len(raw) > worker_wire.MAX_OUTPUTS:
        raise ChannelClosed("an answer without a list of outputs")
    if raw and region is None:
        raise ChannelClosed("outputs without an output region")
    refs = [TensorRef.checked(r, region.size if region else 0, "output") for r in raw]
    return [_copy_out(region, ref) for ref in refs]


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
        same = all(a.dtype == ref.dtype.numpy for a in arrays)
        if same and sum(a.nbytes for a in arrays) == ref.nbytes:
            with memoryview(region.map) as dst:
                at = ref.offset
                for a in (a for a in arrays if a.nbytes):  # (memoryview casts no empty one)
                    with a.data.cast("B") as raw:
                        dst[at : at + raw.nbytes] = raw
                        at += raw.nbytes
            return
        joined = np.ndarray(ref.shape, dtype=ref.dtype.numpy, buffer=region.map, offset=ref.offset)
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


def _copy_out(region: Region | None, ref: TensorRef) -> torch.Tensor:
    """An output copied out of the worker's region (which the next batch overwrites)."""
    import numpy as np

    info = ref.dtype
    if region is None or ref.nbytes == 0:
        array = np.empty(ref.shape, dtype=info.numpy)
    else:
        count = ref.nbytes // info.itemsize
        array = np.frombuffer(region.map, dtype=info.numpy, count=count, offset=ref.offset)
        array = array.reshape(ref.shape).copy()
    return host_to_torch(info, array)

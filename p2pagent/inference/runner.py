"""What the device worker threads do with a batch: stage, forward, split.

Blocking code, called only from the engine's worker threads, never from the event loop:

- ``stage``: concatenate the requests' inputs along dimension 0 and put them on the device.
  On CUDA the concatenation writes straight into pinned host memory and the copy is issued
  ``non_blocking`` on a side stream, so it overlaps the forward pass of the batch before.
- ``compute``: the forward pass under ``torch.inference_mode``, outputs back on the CPU.
  A batch the device has no memory for (``torch.OutOfMemoryError``) is split in halves and
  each half retried, down to single rows; the outputs are joined again.
- ``split``: each request's rows of every output.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from p2pagent.errors import Internal, ResourceExhausted
from p2pagent.inference.formats import LoadedModel
from p2pagent.inference.tensors import HostTensor, host_to_torch

if TYPE_CHECKING:
    from p2pagent.inference.spec import InputTensor


@dataclass(frozen=True)
class Staged:
    """A batch's inputs on the device, ready for the forward pass."""

    inputs: list[torch.Tensor]
    rows: int
    #: CUDA event recorded after the copy (None on CPU).
    ready: Any = None
    #: Pinned host buffers that must outlive the asynchronous copy.
    keep: tuple[torch.Tensor, ...] = ()


class BatchRunner:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._cuda = device.type == "cuda"
        self._copy_stream: Any = torch.cuda.Stream(device) if self._cuda else None  # type: ignore[no-untyped-call]
        #: Forward passes split because of out-of-memory (for stats and tests).
        self.oom_splits = 0

    # ---- stage ---------------------------------------------------------------------------

    def stage(self, model: LoadedModel, parts: Sequence[Sequence[InputTensor]]) -> Staged:
        rows = sum(int(p[0].shape[0]) for p in parts) if model.spec.batchable else 1
        columns = list(zip(*parts))
        if not self._cuda:
            inputs = [_cat(col) for col in columns]
            return Staged([t.to(self.device) for t in inputs], rows)
        pinned = [_cat_pinned(col) for col in columns]
        with torch.cuda.stream(self._copy_stream):
            on_device = [t.to(self.device, non_blocking=True) for t in pinned]
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ready.record(self._copy_stream)
        return Staged(on_device, rows, ready, tuple(pinned))

    # ---- compute -------------------------------------------------------------------------

    def compute(self, model: LoadedModel, staged: Staged) -> tuple[list[torch.Tensor], float]:
        """Runs the forward pass; returns (outputs on the CPU in port order, seconds)."""
        start = time.perf_counter()
        if staged.ready is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(staged.ready)
            for t in staged.inputs:
                t.record_stream(stream)  # allocated on the copy stream, used on this one
        with torch.inference_mode():
            outputs = self._forward(model, staged.inputs, staged.rows)
            outputs = [o.to("cpu") for o in outputs]
        return outputs, time.perf_counter() - start

    def run(
        self, model: LoadedModel, parts: Sequence[Sequence[InputTensor]]
    ) -> tuple[list[list[torch.Tensor]], float]:
        """stage + compute + split in one call (the CPU path: one thread, no overlap)."""
        outputs, seconds = self.compute(model, self.stage(model, parts))
        return split(model, outputs, parts), seconds

    def _forward(
        self, model: LoadedModel, inputs: list[torch.Tensor], rows: int
    ) -> list[torch.Tensor]:
        try:
            return _outputs(model, model.fn(*inputs), rows)
        except torch.OutOfMemoryError:
            if self._cuda:
                torch.cuda.empty_cache()
            if rows < 2 or not model.spec.batchable:
                raise ResourceExhausted(
                    f"model {model.name!r} ran out of device memory on a single row; "
                    "it does not fit this device"
                ) from None
        # Out of memory on a whole batch: the halves need about half the activations each.
        self.oom_splits += 1
        half = rows // 2
        first = self._forward(model, [t[:half] for t in inputs], half)
        second = self._forward(model, [t[half:] for t in inputs], rows - half)
        return [torch.cat([a, b]) for a, b in zip(first, second)]


def split(
    model: LoadedModel,
    outputs: list[torch.Tensor],
    parts: Sequence[Sequence[InputTensor]],
) -> list[list[torch.Tensor]]:
    """Each request's rows of every output (views, no copies)."""
    if len(parts) == 1:
        return [outputs]
    sizes = [int(p[0].shape[0]) for p in parts]
    pieces = [torch.split(o, sizes) for o in outputs]
    return [[p[i] for p in pieces] for i in range(len(parts))]


def _cat(column: Sequence[InputTensor]) -> torch.Tensor:
    """One input of the batch: the requests' tensors joined along dimension 0.

    Wire inputs (host tensors) are joined by one ``numpy.concatenate``, the only copy their
    bytes ever get, and wrapped by torch without another.
    """
    if all(isinstance(t, HostTensor) for t in column):
        hosts: list[HostTensor] = column  # type: ignore[assignment]
        info = hosts[0].dtype
        if len(hosts) == 1:
            return hosts[0].to_torch()
        return host_to_torch(info, np.concatenate([h.array for h in hosts]))
    tensors = [_as_torch(t) for t in column]
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _cat_pinned(column: Sequence[InputTensor]) -> torch.Tensor:
    first = _as_torch(column[0])
    rows = sum(int(t.shape[0]) for t in column)
    out = torch.empty((rows, *first.shape[1:]), dtype=first.dtype, pin_memory=True)
    torch.cat([_as_torch(t).to("cpu") for t in column], out=out)
    return out


def _as_torch(t: InputTensor) -> torch.Tensor:
    # A host tensor's array may be a read-only view of a received message: torch gets a
    # view only where it does not write (``torch.cat`` reads it into fresh memory).
    if isinstance(t, HostTensor):
        return host_to_torch(t.dtype, t.array) if t.array.flags.writeable else t.to_torch()
    return t


def _outputs(model: LoadedModel, result: Any, rows: int) -> list[torch.Tensor]:
    """The model's return value as tensors in output-port order, checked."""
    ports = model.spec.outputs
    if isinstance(result, torch.Tensor):
        values: list[Any] = [result]
    elif isinstance(result, Mapping):
        missing = [p.name for p in ports if p.name not in result]
        if missing:
            raise Internal(
                f"model {model.name!r} returned no output named {missing[0]!r} "
                f"(it returned {sorted(result)})"
            )
        values = [result[p.name] for p in ports]
    elif isinstance(result, list | tuple):
        values = list(result)
    else:
        raise Internal(f"model {model.name!r} returned a {type(result).__name__}, not tensors")
    if len(values) != len(ports):
        raise Internal(
            f"model {model.name!r} returned {len(values)} output(s), its metadata declares "
            f"{len(ports)} {[p.name for p in ports]}"
        )
    for port, v in zip(ports, values):
        if not isinstance(v, torch.Tensor):
            raise Internal(f"model {model.name!r}: output {port.name!r} is not a tensor")
        if model.spec.batchable and (v.dim() == 0 or int(v.shape[0]) != rows):
            raise Internal(
                f"model {model.name!r}: output {port.name!r} has shape {list(v.shape)}, "
                f"expected {rows} rows in dimension 0 (one per input row)"
            )
    return values

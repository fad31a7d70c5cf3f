"""A cache layer that grows in place: the running batch's decode step writes each row's new
key and value into spare columns instead of copying the whole cache.

transformers' ``DynamicLayer`` concatenates on every update, so each decode step copies every
cached token of every row of every layer: on a 32-row batch of GPT-2 (full-width keys and
values) that copy was a quarter of the step. ``GrowingLayer`` keeps ``HEADROOM`` spare
columns and reallocates (one copy, ``HEADROOM`` more columns) only when they run out. The
batch cache's own joins and trims still assign whole tensors (``keys``/``values``), which
become the layer's storage as they are.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

#: Spare columns kept per reallocation: one copy of the cache every ``HEADROOM`` steps
#: instead of every step, for at most this many unused positions per row. Never past the
#: batch's longest sequence limit (``max_columns``), which the KV budget reserved already,
#: so the budget still bounds the cache's peak.
HEADROOM = 16


class GrowingLayer(DynamicLayer):  # type: ignore[no-untyped-call]  # untyped base
    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._len = 0
        #: The values' own length: ``keys`` and ``values`` are assigned one after the other.
        self._vlen = 0
        #: Columns the storage may have at most (the running rows' longest limit).
        self.max_columns = 0
        super().__init__()  # type: ignore[no-untyped-call]
        self.device = keys.device
        self.is_initialized = True
        self.keys, self.values = keys, values

    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._k is None else self._k[:, :, : self._len]

    @keys.setter
    def keys(self, tensor: torch.Tensor | None) -> None:
        self._k = tensor
        self._len = 0 if tensor is None else int(tensor.shape[-2])

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._v is None else self._v[:, :, : self._vlen]

    @values.setter
    def values(self, tensor: torch.Tensor | None) -> None:
        self._v = tensor
        self._vlen = 0 if tensor is None else int(tensor.shape[-2])

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._k is not None and self._v is not None and self._len == self._vlen
        end = self._len + int(key_states.shape[-2])
        if end > self._k.shape[-2]:
            columns = max(end, min(end + HEADROOM, self.max_columns))
            self._k = _regrown(self._k, self._len, columns)
            self._v = _regrown(self._v, self._len, columns)
        self._k[:, :, self._len : end] = key_states
        self._v[:, :, self._len : end] = value_states
        self._len = self._vlen = end
        return self._k[:, :, :end], self._v[:, :, :end]

    def get_seq_length(self) -> int:
        return self._len

    def set_storage(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        """Tensors with room past ``length`` columns, of which the first ``length`` are the
        cache (a join builds them with the headroom at once: one copy, not two)."""
        self._k, self._v = keys, values
        self._len = self._vlen = length


def stacked(old: torch.Tensor, new: torch.Tensor, width: int, columns: int) -> torch.Tensor:
    """``old``'s rows, then ``new``'s, each left-padded with zeros to ``width`` columns, in
    storage of ``columns >= width`` columns: each input copied once."""
    rows, old_w, new_w = old.shape[0], old.shape[-2], new.shape[-2]
    out = old.new_empty((rows + new.shape[0], old.shape[1], columns, old.shape[3]))
    out[:rows, :, : width - old_w].zero_()  # padding must be finite: masked, not ignored
    out[:rows, :, width - old_w : width] = old
    out[rows:, :, : width - new_w].zero_()
    out[rows:, :, width - new_w : width] = new
    return out


def _regrown(tensor: torch.Tensor, used: int, columns: int) -> torch.Tensor:
    shape = list(tensor.shape)
    shape[-2] = columns
    out = tensor.new_empty(shape)
    out[:, :, :used] = tensor[:, :, :used]
    return out


def growing(cache: Any) -> Any:
    """``cache`` with each plain ``DynamicLayer`` that holds tensors made a ``GrowingLayer``,
    in place. Other layers (sliding windows, linear attention) stay as they are."""
    if isinstance(cache, DynamicCache):
        cache.layers = [_grown(layer) for layer in cache.layers]
    return cache


def cap_columns(cache: Any, columns: int) -> None:
    """Sets the most columns each growing layer of ``cache`` may allocate."""
    for layer in getattr(cache, "layers", ()):
        if isinstance(layer, GrowingLayer):
            layer.max_columns = columns


def _grown(layer: Any) -> Any:
    if type(layer) is not DynamicLayer:
        return layer
    keys, values = layer.keys, layer.values
    if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
        return layer
    if keys.dim() != 4 or keys.numel() == 0:
        return layer
    return GrowingLayer(keys, values)

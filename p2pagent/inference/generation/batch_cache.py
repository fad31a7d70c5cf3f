"""The running batch's key/value cache: sequences of different lengths, left-padded.

Continuous batching over a stock transformers model (TGI's first design): every decoding
sequence is one row of one ``DynamicCache``, padded on the left to the longest row, with an
attention mask that hides the padding and a position id per row that counts only real
tokens. A sequence that finished prefill joins by padding (it or the batch) and
concatenating; a sequence that leaves is dropped by row, and columns that became padding in
every row are cut, so the batch shrinks back as long sequences end.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from p2pagent.inference.generation.growing_cache import (
    HEADROOM,
    GrowingLayer,
    cap_columns,
    growing,
    stacked,
)


def _layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(k, v) for k, v, *_ in cache]


class BatchCache:
    def __init__(self) -> None:
        self.seq_ids: list[int] = []
        #: Most tokens each row's sequence may reach (prompt + max_new_tokens): the cache
        #: never reserves columns past the longest (growing_cache's headroom stops there).
        self.limits: list[int] = []
        self._cache: Any = None
        self.mask = torch.zeros((0, 0), dtype=torch.long)
        self.positions = torch.zeros((0,), dtype=torch.long)
        self.next_tokens = torch.zeros((0,), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.seq_ids)

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def join(self, seq_id: int, cache: Any, length: int, next_token: int, limit: int) -> None:
        """Adds a prefilled sequence (its own batch-1 cache of ``length`` tokens) whose next
        input is ``next_token`` and whose cache may reach ``limit`` tokens."""
        layers = _layers(cache)
        device = layers[0][0].device
        if not self.seq_ids:
            self._cache = growing(cache)
            self.mask = torch.ones((1, length), dtype=torch.long, device=device)
            self.positions = torch.tensor([length], device=device)
            self.next_tokens = torch.tensor([next_token], device=device)
            self.seq_ids = [seq_id]
            self.limits = [limit]
            return
        width = max(self.width, length)
        grow, pad = width - self.width, width - length
        columns = max(width, min(width + HEADROOM, max(*self.limits, limit)))
        for layer, (nk, nv) in zip(self._cache.layers, layers, strict=True):
            # One layer at a time, the old tensors freed before the next layer is copied:
            # a join costs one layer's cache more memory, not the batch's whole cache.
            if isinstance(layer, GrowingLayer):
                old_k, old_v = layer.keys, layer.values
                assert old_k is not None and old_v is not None
                keys = stacked(old_k, nk, width, columns)
                layer.set_storage(keys, stacked(old_v, nv, width, columns), width)
                continue
            layer.keys = torch.cat([F.pad(layer.keys, (0, 0, grow, 0)), F.pad(nk, (0, 0, pad, 0))])
            layer.values = torch.cat(
                [F.pad(layer.values, (0, 0, grow, 0)), F.pad(nv, (0, 0, pad, 0))]
            )
        row = torch.ones((1, length), dtype=torch.long, device=device)
        self.mask = torch.cat([F.pad(self.mask, (grow, 0)), F.pad(row, (pad, 0))])
        self.positions = torch.cat([self.positions, torch.tensor([length], device=device)])
        self.next_tokens = torch.cat([self.next_tokens, torch.tensor([next_token], device=device)])
        self.seq_ids.append(seq_id)
        self.limits.append(limit)

    def keep(self, seq_ids: set[int]) -> None:
        """Drops every row not in ``seq_ids``, then the columns that are padding in all."""
        rows = [i for i, s in enumerate(self.seq_ids) if s in seq_ids]
        if len(rows) == len(self.seq_ids):
            return
        self.seq_ids = [self.seq_ids[i] for i in rows]
        self.limits = [self.limits[i] for i in rows]
        if not rows:
            self.__init__()  # type: ignore[misc]
            return
        index = torch.tensor(rows, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        start = int((mask.sum(dim=0) > 0).nonzero()[0].item())
        self.mask = mask[:, start:]
        for layer in self._cache.layers:
            layer.keys = layer.keys[:, :, start:].index_select(0, index)
            layer.values = layer.values[:, :, start:].index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        self.next_tokens = self.next_tokens.index_select(0, index)

    def step_inputs(self) -> dict[str, Any]:
        """Keyword arguments of the model's forward for one decode step of every row."""
        cap_columns(self._cache, max(self.limits))
        ones = torch.ones((len(self), 1), dtype=torch.long, device=self.mask.device)
        return {
            "input_ids": self.next_tokens[:, None],
            "attention_mask": torch.cat([self.mask, ones], dim=1),
            "position_ids": self.positions[:, None],
            "cache": self._cache,
            "use_cache": True,
        }

    def advance(self, cache: Any, next_tokens: torch.Tensor) -> None:
        """Takes the cache the step returned (one column longer) and each row's new token."""
        self._cache = cache
        ones = torch.ones((len(self), 1), dtype=torch.long, device=self.mask.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        self.positions = self.positions + 1
        self.next_tokens = next_tokens

    def drop_all(self) -> None:
        self.__init__()  # type: ignore[misc]

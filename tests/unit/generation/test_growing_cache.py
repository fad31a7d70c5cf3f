"""The in-place growing cache layer (inference/generation/growing_cache.py): what it returns
equals transformers' concatenating layer after any mix of updates and whole-tensor
assignments (the batch cache's joins and trims), and it reallocates once per HEADROOM
columns instead of copying the cache on every step."""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from p2pagent.inference.generation.growing_cache import HEADROOM, GrowingLayer, growing


def _kv(rows: int, columns: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 2, columns, 4, generator=g), torch.randn(
        rows, 2, columns, 4, generator=g
    )


def test_updates_and_assignments_equal_the_concatenating_layer() -> None:
    keys, values = _kv(3, 5, 0)
    grow = GrowingLayer(keys, values)
    grow.max_columns = 1000
    plain = DynamicLayer()
    plain.update(keys, values)
    storages = set()
    rows = 3
    for step in range(3 * HEADROOM):
        k, v = _kv(rows, 1, step + 1)
        got = grow.update(k, v)
        want = plain.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        storages.add(grow.keys.untyped_storage().data_ptr())  # type: ignore[union-attr]
        if step == HEADROOM:  # a trim, as the batch cache assigns it: rows 0 and 2, 2 columns
            index = torch.tensor([0, 2])
            for layer in (grow, plain):
                layer.keys = layer.keys[:, :, 2:].index_select(0, index)  # type: ignore[index]
                layer.values = layer.values[:, :, 2:].index_select(0, index)  # type: ignore[index]
            rows = 2
    assert grow.get_seq_length() == plain.get_seq_length()
    assert torch.equal(grow.keys, plain.keys) and torch.equal(grow.values, plain.values)  # type: ignore[arg-type]
    # One storage per HEADROOM steps (plus the trim's), not one per step.
    assert len(storages) <= 3 * HEADROOM // HEADROOM + 3


def test_growing_converts_a_dynamic_cache_in_place() -> None:
    cache = DynamicCache()
    keys, values = _kv(1, 4, 7)
    cache.update(keys, values, 0)
    cache.update(keys * 2, values * 2, 1)
    assert growing(cache) is cache
    assert all(isinstance(layer, GrowingLayer) for layer in cache.layers)
    assert cache.get_seq_length() == 4
    assert torch.equal(cache.layers[1].keys, keys * 2)  # type: ignore[arg-type]


def test_the_headroom_stops_at_the_longest_limit() -> None:
    keys, values = _kv(2, 5, 0)
    grow = GrowingLayer(keys, values)
    grow.max_columns = 8  # the rows' sequences may reach 8 tokens: the budget reserved 8
    for step in range(3):
        grow.update(*_kv(2, 1, step))
        assert grow._k is not None and grow._k.shape[-2] == 8


def test_a_join_stacks_left_padded_rows_into_storage_with_headroom() -> None:
    import torch.nn.functional as F

    from p2pagent.inference.generation.growing_cache import stacked

    old, _ = _kv(3, 5, 1)
    new, _ = _kv(1, 7, 2)
    out = stacked(old, new, 7, 12)
    assert out.shape == (4, 2, 12, 4)
    want = torch.cat([F.pad(old, (0, 0, 2, 0)), new])
    assert torch.equal(out[:, :, :7], want)  # the padding is zeros, not stale memory

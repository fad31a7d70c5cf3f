"""The engine's ragged batching on CPU: requests of different lengths run in one batch, each
padded to the batch's length with its mask, and each gets the answer it would get alone
(per-token outputs trimmed back to its own length); token ids past a folder's maximum are
refused naming it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch

from p2pagent.errors import InvalidArgument
from p2pagent.inference.cache import ModelCache
from p2pagent.inference.config import InferenceConfig
from p2pagent.inference.device import select_device
from p2pagent.inference.engine import InferenceEngine
from p2pagent.inference.formats import LoadedModel, ModelFormat
from p2pagent.inference.ragged import RaggedInputs
from p2pagent.inference.spec import ModelSpec, PortSpec

PAD = 7
SPEC = ModelSpec(
    (PortSpec("input_ids", "int64", (-1, -1)), PortSpec("attention_mask", "int64", (-1, -1))),
    (PortSpec("total", "float32", (-1, 1)), PortSpec("per_token", "float32", (-1, -1, 1))),
)


class Seen:
    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def model(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sums the ids the mask keeps; each token's id where kept, -1 on padding. A padded
        id (PAD) that leaked past the mask would change the sums."""
        self.shapes.append(tuple(ids.shape))
        kept = (ids * mask).float()
        per_token = torch.where(mask.bool(), ids.float(), torch.full_like(kept, -1.0))
        return {"total": kept.sum(1, keepdim=True), "per_token": per_token[..., None]}


@pytest.fixture
def engine() -> Any:
    seen = Seen()

    def load(name: str, path: Path, spec: ModelSpec, device: Any, fmt: Any) -> LoadedModel:
        return LoadedModel(
            name, SPEC, ModelFormat.HF_FOLDER, seen.model, torch.device("cpu"), 0,
            ragged=RaggedInputs((PAD, 0), frozenset({"per_token"})),
        )  # fmt: skip

    cache = ModelCache("cpu", 1 << 30, loader=load)
    cache.register("m", Path("unused"), SPEC)
    cfg = InferenceConfig(max_queue_delay_s=0.0, pipeline_depth=1, max_padding_ratio=1.0)
    eng = InferenceEngine(cache, cfg, select_device("cpu"), set_threads=False)
    return eng, seen


def _ids(*values: int) -> dict[str, torch.Tensor]:
    ids = torch.tensor([values], dtype=torch.int64)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


async def test_requests_of_different_lengths_share_a_batch_and_get_their_own_answers(
    engine: Any,
) -> None:
    eng, seen = engine
    try:
        # All four wait for the model's load, then are admitted together: one batch.
        results = await asyncio.gather(
            eng.infer("m", _ids(1, 2, 3)),
            eng.infer("m", _ids(10, 20, 30, 40, 50)),
            eng.infer("m", _ids(5)),
        )
    finally:
        await eng.close()
    assert seen.shapes == [(3, 5)]  # three rows padded to the longest, five
    for out, values in zip(results, [(1, 2, 3), (10, 20, 30, 40, 50), (5,)]):
        assert out["total"].tolist() == [[float(sum(values))]]
        assert out["per_token"][0, :, 0].tolist() == [float(v) for v in values]
    stats = eng.stats()["m"]
    assert (stats.batches, stats.tokens, stats.padded_tokens) == (1, 3 + 5 + 1, 15)


async def test_exact_length_grouping_when_ragged_batching_is_off(engine: Any) -> None:
    eng, seen = engine
    eng.config.ragged_batching = False
    try:
        await asyncio.gather(
            eng.infer("m", _ids(1)), eng.infer("m", _ids(1, 2)), eng.infer("m", _ids(3, 4, 5))
        )
    finally:
        await eng.close()
    assert sorted(seen.shapes) == [(1, 1), (1, 2), (1, 3)]


async def test_inputs_of_different_lengths_in_one_request_are_refused(engine: Any) -> None:
    eng, _ = engine
    bad = {"input_ids": torch.ones((1, 3), dtype=torch.int64),
           "attention_mask": torch.ones((1, 4), dtype=torch.int64)}  # fmt: skip
    try:
        with pytest.raises(InvalidArgument, match="the same length"):
            await eng.infer("m", bad)
    finally:
        await eng.close()

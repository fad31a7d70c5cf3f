"""Model cache: LRU under a byte budget, loading off the event loop, shared loads."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import torch

from p2pagent.errors import NotFound, ResourceExhausted
from p2pagent.inference.cache import LruBudget, ModelCache
from p2pagent.inference.formats import LoadedModel, ModelFormat
from p2pagent.inference.spec import ModelSpec, PortSpec

SPEC = ModelSpec((PortSpec("x", "float32", (-1, 1)),), (PortSpec("y", "float32", (-1, 1)),))


def test_lru_budget_evicts_least_recently_used() -> None:
    lru = LruBudget(100)
    assert lru.add("a", 40) == []
    assert lru.add("b", 40) == []
    lru.touch("a")
    assert lru.add("c", 40) == ["b"]
    assert lru.add("d", 90) == ["a", "c"]
    assert lru.sizes() == {"d": 90}
    with pytest.raises(ResourceExhausted, match="cache_budget_bytes"):
        lru.add("huge", 101)


class FakeLoader:
    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.calls: list[str] = []
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(
        self, name: str, path: Path, spec: ModelSpec, device: torch.device, fmt: object
    ) -> LoadedModel:
        self.calls.append(name)
        self.threads.add(threading.current_thread().name)
        self.gate.wait(5)
        return LoadedModel(
            name, spec, ModelFormat.TORCHSCRIPT, lambda x: x, device, self.sizes[name]
        )


async def test_cache_loads_off_loop_evicts_and_reloads() -> None:
    loader = FakeLoader({"a": 60, "b": 60})
    cache = ModelCache(torch.device("cpu"), 100, loader=loader)
    cache.register("a", Path("a.pt"), SPEC)
    cache.register("b", Path("b.pt"), SPEC)
    a = await cache.get("a")
    assert await cache.get("a") is a and loader.calls == ["a"]
    assert threading.current_thread().name not in loader.threads
    await cache.get("b")
    assert cache.resident() == {"b": 60}  # a was unloaded to fit b
    await cache.get("a")
    assert loader.calls == ["a", "b", "a"] and cache.evictions == 2
    with pytest.raises(NotFound, match="'c' is not available on this node"):
        await cache.get("c")
    cache.close()


async def test_concurrent_gets_share_one_load() -> None:
    loader = FakeLoader({"a": 1})
    loader.gate.clear()
    cache = ModelCache(torch.device("cpu"), 100, loader=loader)
    cache.register("a", Path("a.pt"), SPEC)
    waiters = [asyncio.ensure_future(cache.get("a")) for _ in range(5)]
    await asyncio.sleep(0)
    loader.gate.set()
    models = await asyncio.gather(*waiters)
    assert loader.calls == ["a"] and all(m is models[0] for m in models)
    cache.close()


async def test_reregistering_a_model_replaces_the_resident_copy() -> None:
    loader = FakeLoader({"a": 1})
    cache = ModelCache(torch.device("cpu"), 100, loader=loader)
    cache.register("a", Path("v1.pt"), SPEC)
    first = await cache.get("a")
    cache.register("a", Path("v1.pt"), SPEC)  # same source: kept
    assert await cache.get("a") is first
    cache.register("a", Path("v2.pt"), SPEC)
    assert await cache.get("a") is not first
    cache.unregister("a")
    assert cache.resident() == {} and cache.names() == []
    cache.close()

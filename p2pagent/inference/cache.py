"""Resident models under a memory budget, least recently used unloaded first.

``LruBudget`` is the pure accounting (which models to unload to fit a new one);
``ModelCache`` is the asyncio glue: it knows which model files are available (registered by
the models layer once their hash is verified), loads them on a dedicated loader thread so the
event loop and the inference worker never block on disk, and shares one load among
concurrent callers.

The budget counts parameter and buffer bytes of resident models. A model unloaded while some
of its batches are still queued or running stays alive until they finish (they hold a
reference), so memory can briefly exceed the budget by that model.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from p2pagent.errors import NotFound, ResourceExhausted
from p2pagent.inference.formats import LoadedModel, ModelFormat, load_model
from p2pagent.inference.spec import ModelSpec

if TYPE_CHECKING:
    import torch

#: Loads one model file; the default imports torch on the first call, on the loader thread.
Loader = Callable[[str, Path, ModelSpec, "torch.device | str", ModelFormat | None], LoadedModel]


class LruBudget:
    """Pure LRU accounting of resident sizes against a byte budget."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self._sizes: OrderedDict[str, int] = OrderedDict()

    @property
    def total(self) -> int:
        return sum(self._sizes.values())

    def __contains__(self, name: object) -> bool:
        return name in self._sizes

    def sizes(self) -> dict[str, int]:
        return dict(self._sizes)

    def touch(self, name: str) -> None:
        if name in self._sizes:
            self._sizes.move_to_end(name)

    def add(self, name: str, nbytes: int) -> list[str]:
        """Makes ``name`` resident and most recent; returns the models to unload to fit."""
        if nbytes > self.budget:
            raise ResourceExhausted(
                f"model {name!r} needs {nbytes} bytes, more than the whole model cache budget "
                f"of {self.budget} bytes; raise inference.cache_budget_bytes"
            )
        self._sizes.pop(name, None)
        evicted: list[str] = []
        while self._sizes and self.total + nbytes > self.budget:
            victim, _ = self._sizes.popitem(last=False)
            evicted.append(victim)
        self._sizes[name] = nbytes
        return evicted

    def remove(self, name: str) -> None:
        self._sizes.pop(name, None)


@dataclass(frozen=True)
class ModelSource:
    """Where a model's verified file is and how to read it."""

    name: str
    path: Path
    spec: ModelSpec
    format: ModelFormat | None = None


class ModelCache:
    def __init__(
        self,
        device: torch.device | str,
        budget_bytes: int,
        *,
        loader: Loader = load_model,
        executor: Executor | None = None,
    ) -> None:
        self._device = device
        self._lru = LruBudget(budget_bytes)
        self._loader = loader
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="model-loader")
        self._sources: dict[str, ModelSource] = {}
        self._resident: dict[str, LoadedModel] = {}
        self._loading: dict[str, asyncio.Future[LoadedModel]] = {}
        self.loads = 0
        self.evictions = 0

    def register(
        self, name: str, path: Path, spec: ModelSpec, fmt: ModelFormat | None = None
    ) -> None:
        """Makes a model available (its file must already be verified); replaces any older."""
        source = ModelSource(name, Path(path), spec, fmt)
        if self._sources.get(name) != source:
            self._unload(name)
        self._sources[name] = source

    def unregister(self, name: str) -> None:
        self._sources.pop(name, None)
        self._unload(name)

    def names(self) -> list[str]:
        return sorted(self._sources)

    def serves(self, name: str) -> bool:
        """Whether ``name`` is registered here (``name in names()`` without the sort: it is
        asked on every request)."""
        return name in self._sources

    def spec(self, name: str) -> ModelSpec:
        return self._source(name).spec

    def resident(self) -> dict[str, int]:
        """Resident models and their sizes in bytes, least recently used first."""
        return self._lru.sizes()

    def resident_model(self, name: str) -> LoadedModel | None:
        """The model if it is loaded (marked as just used), else None; never loads."""
        model = self._resident.get(name)
        if model is not None:
            self._lru.touch(name)
        return model

    async def get(self, name: str) -> LoadedModel:
        """The loaded model, loading it (off the event loop) if it is not resident."""
        model = self._resident.get(name)
        if model is not None:
            self._lru.touch(name)
            return model
        pending = self._loading.get(name)
        if pending is None:
            pending = asyncio.ensure_future(self._load(self._source(name)))
            self._loading[name] = pending
            pending.add_done_callback(lambda _f: self._loading.pop(name, None))
        return await asyncio.shield(pending)

    def close(self) -> None:
        self._resident.clear()
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- internals -----------------------------------------------------------------------

    def _source(self, name: str) -> ModelSource:
        source = self._sources.get(name)
        if source is None:
            known = ", ".join(self.names()) or "none"
            raise NotFound(f"model {name!r} is not available on this node (available: {known})")
        return source

    async def _load(self, source: ModelSource) -> LoadedModel:
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(
            self._executor,
            self._loader,
            source.name,
            source.path,
            source.spec,
            self._device,
            source.format,
        )
        self.loads += 1
        if self._sources.get(source.name) != source:
            return model  # replaced or removed while loading: serve this caller, keep nothing
        for victim in self._lru.add(source.name, model.nbytes):
            self._resident.pop(victim, None)
            self.evictions += 1
        self._resident[source.name] = model
        return model

    def _unload(self, name: str) -> None:
        self._resident.pop(name, None)
        self._lru.remove(name)

"""The generation modules load off the event loop once; later requests pay no thread hop."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from p2pagent.inference.generation import lazy


async def test_imports_on_a_thread_once_then_returns_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = "p2pagent.inference.generation.relay_stats"
    monkeypatch.setattr(lazy, "_done", set())
    hops: list[Any] = []
    real = asyncio.to_thread

    async def counting(func: Any, /, *args: Any) -> Any:
        hops.append(args)
        return await real(func, *args)

    monkeypatch.setattr(asyncio, "to_thread", counting)
    for _ in range(3):
        await lazy.imported(module)
    assert hops == [(module,)] and module in sys.modules


async def test_a_failed_import_is_tried_again() -> None:
    with pytest.raises(ModuleNotFoundError):
        await lazy.imported("p2pagent.inference.generation.no_such_module")
    assert "p2pagent.inference.generation.no_such_module" not in lazy._done

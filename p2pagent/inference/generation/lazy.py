"""The generation modules (torch, transformers: seconds to import) load on a node's first
generation, on a worker thread so the event loop keeps serving; after that, at no cost."""

from __future__ import annotations

import asyncio
import importlib

#: Modules whose import completed (a module is in ``sys.modules`` already while another
#: thread still imports it, so that is not the test).
_done: set[str] = set()


async def imported(module: str) -> None:
    """Imports ``module`` off the event loop the first time; later calls return at once.
    Each request hopping to a pool thread only to find the module loaded cost every stream
    a wait for that thread before its first token (a long one on a busy machine)."""
    if module in _done:
        return
    await asyncio.to_thread(importlib.import_module, module)
    _done.add(module)

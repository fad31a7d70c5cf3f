"""A one-line elapsed-time ticker on stderr for operations that give no progress of their own.

``PullModel`` answers once the whole model is on the node; until then a terminal would show
nothing. On a terminal the ticker redraws ``pulling classifier on 10.0.0.2:7400... 12 s``
twice a second and erases itself at the end; when stderr is not a terminal (scripts, --json)
it prints nothing.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

REDRAW_S = 0.5


@asynccontextmanager
async def ticker(label: str, enabled: bool = True) -> AsyncIterator[None]:
    if not (enabled and sys.stderr.isatty()):
        yield
        return
    start = time.monotonic()

    async def draw() -> None:
        while True:
            sys.stderr.write(f"\r{label}... {time.monotonic() - start:.0f} s")
            sys.stderr.flush()
            await asyncio.sleep(REDRAW_S)

    task = asyncio.get_running_loop().create_task(draw())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sys.stderr.write("\r\x1b[K")  # erase the line: the result is printed next
        sys.stderr.flush()

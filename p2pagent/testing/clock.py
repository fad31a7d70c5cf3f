"""A clock for asyncio code under test whose time moves only when the test says so.

``FakeClock`` is what ``tasks/adapter.py`` takes as its ``Clock``: ``now()`` is the fake
time, and ``wait(wake, until)`` returns when ``wake`` is set or when :meth:`FakeClock.advance`
moves the time to ``until`` or past it, never because real time passed. A test runs as fast
as the loop can go, and the same every time.
"""

from __future__ import annotations

import asyncio


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    async def wait(self, wake: asyncio.Event, until: float) -> None:
        if until <= self._now or wake.is_set():
            return
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((until, timer))
        woken: asyncio.Future[bool] = asyncio.ensure_future(wake.wait())
        waits: set[asyncio.Future[object]] = {timer, woken}  # type: ignore[arg-type]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            self._sleepers = [(t, f) for t, f in self._sleepers if f is not timer]

    async def pause(self) -> None:
        await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Moves the time on, wakes whoever waited until then, and lets them run."""
        self._now += seconds
        for until, timer in list(self._sleepers):
            if until <= self._now and not timer.done():
                timer.set_result(None)
        await settle()


async def settle(rounds: int = 50) -> None:
    """Lets every ready callback and task run (a few passes of the loop, no real time)."""
    for _ in range(rounds):
        await asyncio.sleep(0)

"""The elapsed-time ticker draws only on a terminal and erases itself."""

from __future__ import annotations

import asyncio
import io

import pytest

from p2pagent.cli.progress import ticker


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_ticker_draws_on_a_terminal_and_erases_its_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    err = _Terminal()
    monkeypatch.setattr("sys.stderr", err)
    async with ticker("pulling demo on n1"):
        await asyncio.sleep(0)  # one loop turn: the first draw
    out = err.getvalue()
    assert out.startswith("\rpulling demo on n1... 0 s")
    assert out.endswith("\r\x1b[K")


@pytest.mark.parametrize("tty", [False, True])
async def test_ticker_is_silent_off_a_terminal_or_when_disabled(
    monkeypatch: pytest.MonkeyPatch, tty: bool
) -> None:
    err = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    async with ticker("x", enabled=not tty):
        await asyncio.sleep(0)
    assert err.getvalue() == ""

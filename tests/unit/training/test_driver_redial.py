"""The driver dials a member that restarted at the same address afresh, once per incarnation:
the old channel would reach it only after its reconnect backoff."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from p2pagent.membership.view import ALIVE, MemberView
from p2pagent.training.config import TrainingConfig
from p2pagent.training.driver import TrainingDriver


class Channel:
    def __init__(self) -> None:
        self.closes: list[float | None] = []

    async def close(self, grace: float | None = None) -> None:
        self.closes.append(grace)
        if grace is not None:
            await asyncio.sleep(grace)  # calls still on it: closes when the grace is over


class Pool:
    def __init__(self) -> None:
        self.channels: dict[str, Channel] = {}
        self.retired: list[str] = []

    def get(self, address: str) -> Channel:
        return self.channels.setdefault(address, Channel())

    def retire(self, address: str) -> Channel | None:
        self.retired.append(address)
        return self.channels.pop(address, None)


def driver(pool: Pool) -> TrainingDriver:
    def no_tag(key: str, value: str | None) -> None:
        return None

    set_tag: Callable[[str, str | None], None] = no_tag
    return TrainingDriver(
        "n1",
        TrainingConfig().validate(),
        channels=cast(Any, pool),
        members=cast(Any, None),
        set_tag=set_tag,
    )


def test_a_failed_send_redials_once_per_incarnation_and_closes_the_old_channel() -> None:
    async def run() -> None:
        pool = Pool()
        old = pool.get("127.0.0.9:7000")
        d = driver(pool)
        member = MemberView("n4", "127.0.0.9:7000", ALIVE, 3)
        assert d._redial(member)
        assert pool.retired == ["127.0.0.9:7000"] and "127.0.0.9:7000" not in pool.channels
        # The same incarnation failing again (a dead member still believed alive): no churn.
        assert not d._redial(member)
        assert pool.retired == ["127.0.0.9:7000"]
        # Restarted again: a new incarnation is dialled afresh.
        assert d._redial(MemberView("n4", "127.0.0.9:7000", ALIVE, 4))
        assert len(pool.retired) == 2
        await asyncio.sleep(0)
        # The old channel got its grace period to finish the calls on it...
        assert old.closes and old.closes[0] is not None and old.closes[0] > 0
        # ... and a node stopping does not wait it out: closed at once.
        await asyncio.wait_for(d.stop(), 5)
        assert old.closes[-1] is None

    asyncio.run(run())

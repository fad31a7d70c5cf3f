"""The driver dials a member that restarted at the same address afresh, once per incarnation:
the old channel would reach it only after its reconnect backoff. (The pool closes the old
channel after its grace: tests/unit/transport/test_channel_pool.py.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from p2pagent.membership.view import ALIVE, MemberView
from p2pagent.training.config import TrainingConfig
from p2pagent.training.driver import TrainingDriver


class Pool:
    def __init__(self) -> None:
        self.redialled: list[str] = []

    def redial(self, address: str) -> object:
        self.redialled.append(address)
        return object()


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


def test_a_failed_send_redials_once_per_incarnation() -> None:
    pool = Pool()
    d = driver(pool)
    member = MemberView("n4", "127.0.0.9:7000", ALIVE, 3)
    assert d._redial(member)
    assert pool.redialled == ["127.0.0.9:7000"]
    # The same incarnation failing again (a dead member still believed alive): no churn.
    assert not d._redial(member)
    assert pool.redialled == ["127.0.0.9:7000"]
    # Restarted again: a new incarnation is dialled afresh.
    assert d._redial(MemberView("n4", "127.0.0.9:7000", ALIVE, 4))
    assert pool.redialled == ["127.0.0.9:7000"] * 2

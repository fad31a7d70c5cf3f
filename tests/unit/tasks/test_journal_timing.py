"""The journal writer's restart back-off, from its [tasks] knobs."""

from __future__ import annotations

import pytest

from p2pagent.errors import ConfigError
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.journal import restart_delay


def test_a_writer_dying_young_waits_twice_as_long_each_time_up_to_the_cap() -> None:
    cfg = TasksConfig(journal_restart_delay_s=0.5, journal_restart_max_s=3.0)
    delays = [0.0]
    for _ in range(5):
        delays.append(restart_delay(delays[-1], cfg))
    assert delays == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_cap_below_the_first_delay_is_refused() -> None:
    with pytest.raises(ConfigError, match="journal_restart_max_s"):
        TasksConfig(journal_restart_delay_s=5.0, journal_restart_max_s=1.0).validate()

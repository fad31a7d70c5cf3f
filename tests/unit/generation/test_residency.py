"""Which loaded decoder engines are unloaded (inference/generation/residency.py): superseded
versions once idle, engines idle too long, the least recently used over the weight budget;
never one with a sequence."""

from __future__ import annotations

from p2pagent.inference.generation.residency import (
    Resident,
    is_superseded,
    next_deadline,
    to_unload,
)


def test_a_superseded_version_goes_once_its_last_sequence_ends() -> None:
    busy = Resident("lm@old", 100, busy=True, last_used=0.0, superseded=True)
    idle = Resident("lm@old", 100, busy=False, last_used=0.0, superseded=True)
    assert to_unload([busy], 1.0, idle_s=600, budget_bytes=0) == []
    assert to_unload([idle], 1.0, idle_s=600, budget_bytes=0) == ["lm@old"]


def test_an_engine_idle_too_long_goes_and_the_timer_says_when() -> None:
    engines = [
        Resident("a", 100, busy=False, last_used=10.0),
        Resident("b", 100, busy=False, last_used=50.0),
        Resident("c", 100, busy=True, last_used=0.0),
    ]
    assert next_deadline(engines, idle_s=100) == 110.0
    assert to_unload(engines, 109.9, idle_s=100, budget_bytes=0) == []
    assert to_unload(engines, 110.0, idle_s=100, budget_bytes=0) == ["a"]
    assert to_unload(engines, 1000.0, idle_s=100, budget_bytes=0) == ["a", "b"]
    assert to_unload(engines, 1e9, idle_s=0, budget_bytes=0) == []  # 0: never for idleness
    assert next_deadline(engines, idle_s=0) is None
    assert next_deadline([engines[2]], idle_s=100) is None  # nothing idle: no timer


def test_over_the_budget_the_least_recently_used_idle_engines_go() -> None:
    engines = [
        Resident("old", 300, busy=False, last_used=1.0),
        Resident("busy", 300, busy=True, last_used=0.0),
        Resident("mid", 300, busy=False, last_used=2.0),
        Resident("new", 300, busy=False, last_used=3.0),
    ]
    assert to_unload(engines, 4.0, idle_s=0, budget_bytes=1200) == []
    assert to_unload(engines, 4.0, idle_s=0, budget_bytes=900) == ["old"]
    assert to_unload(engines, 4.0, idle_s=0, budget_bytes=600) == ["old", "mid"]
    # A busy engine is never unloaded, even when the budget cannot be met without it.
    assert to_unload(engines, 4.0, idle_s=0, budget_bytes=1) == ["old", "mid", "new"]


def test_superseded_is_an_older_version_not_chosen_since_the_newer_one() -> None:
    newest = {"lm": ("lm@v2", 10.0)}
    assert is_superseded("lm@v1", 9.0, newest)
    assert not is_superseded("lm@v1", 11.0, newest)  # a pinned sequence chose it since
    assert not is_superseded("lm@v2", 0.0, newest)  # the newest itself
    assert not is_superseded("other@v1", 0.0, newest)
    assert not is_superseded("lm", 0.0, newest)  # a local folder has no versions

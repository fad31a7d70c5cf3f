"""bench.scale's reader of a join's suspicion storm from the daemons' membership log lines."""

from __future__ import annotations

import datetime
from pathlib import Path

from bench import _suspicion_log


def _line(at: datetime.datetime, member: str, state: str) -> str:
    stamp = at.strftime("%H:%M:%S.") + f"{at.microsecond // 1000:03d}"
    where = "INFO    [n1] p2pagent.membership.driver"
    return f"{stamp} {where}: member {member} is {state} (incarnation 2)"


def test_suspicions_are_counted_and_timed_per_observer(tmp_path: Path) -> None:
    t0 = datetime.datetime(2026, 12, 7, 14, 0, 0)

    def at(s: float) -> datetime.datetime:
        return t0 + datetime.timedelta(seconds=s)

    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text(
        "\n".join(
            [
                _line(at(-5), "n3", "suspect"),  # before the window: not counted
                _line(at(1), "n3", "suspect"),
                _line(at(3.5), "n3", "alive"),  # held 2.5 s
                _line(at(4), "n4", "suspect"),
                _line(at(10), "n4", "dead"),  # held 6 s, a death
                "14:00:05.000 INFO    [n1] p2pagent.node: unrelated line",
            ]
        )
        + "\n"
    )
    b.write_text(_line(at(2), "n3", "suspect") + "\n" + _line(at(3), "n3", "alive") + "\n")
    storm = _suspicion_log.read(
        [a, b, tmp_path / "missing.log"], t0.timestamp(), at(60).timestamp(), at(1).timestamp()
    )
    assert storm.suspicions == 3
    assert storm.members_suspected == 2
    assert storm.deaths == 1
    assert (storm.held_p50_s, storm.held_max_s) == (2.5, 6.0)
    assert storm.last_suspicion_s == 3.0  # n4 at 4 s, from the origin at 1 s


def test_a_quiet_window_reports_no_storm(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text("14:00:01.000 INFO    [n1] p2pagent.node: n1 serving\n")
    t = datetime.datetime(2026, 12, 7, 14, 0, 0).timestamp()
    storm = _suspicion_log.read([log], t, t + 60, t)
    assert (storm.suspicions, storm.deaths, storm.held_p50_s, storm.last_suspicion_s) == (
        0,
        0,
        None,
        None,
    )

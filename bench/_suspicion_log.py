"""What the daemons' logs say about suspicions in a time window: how many members each
observer suspected, how long each suspicion lasted until the member was alive again (or
declared dead), and how many false deaths there were.

A join that misses its target on a busy machine is most often a storm of suspicions of
members that were only slow (64 daemons starting on two cores: 51 of 64 members suspected,
each suspicion held ~3 s by every observer, the last ending 25-30 s after the last daemon
answered). The join time alone does not say that; these numbers do, without polling the
daemons (which would add to the load).
"""

from __future__ import annotations

import datetime
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: A member's state change as each daemon logs it (membership/driver.py), with the text log
#: format's time stamp (p2pagent/logs.py).
STATE_LINE = re.compile(
    r"^(\d\d):(\d\d):(\d\d)\.(\d\d\d) .*member (\S+) is (alive|suspect|dead|left) \(", re.M
)


@dataclass
class SuspicionStorm:
    #: Suspect lines logged in the window, over all observers.
    suspicions: int
    #: Members someone suspected.
    members_suspected: int
    #: Dead lines logged in the window (every one false when nothing was killed).
    deaths: int
    #: How long an observer held a member suspect until it logged it alive or dead, seconds.
    held_p50_s: float | None
    held_p90_s: float | None
    held_max_s: float | None
    #: When the last suspicion began, seconds after ``origin`` (the last daemon answering).
    last_suspicion_s: float | None


def _stamp(groups: tuple[str, ...], day: datetime.datetime) -> float:
    h, m, s, ms = (int(x) for x in groups)
    t = day.replace(hour=h, minute=m, second=s, microsecond=ms * 1000).timestamp()
    if t < day.timestamp() - 43_200:  # the line is from just after midnight
        t += 86_400
    return t


def read(logs: Iterable[Path], start: float, end: float, origin: float) -> SuspicionStorm:
    """The suspicions logged between the Unix times ``start`` and ``end``; the last one's
    time is given from ``origin``."""
    day = datetime.datetime.fromtimestamp(start)
    held: list[float] = []
    suspicions = deaths = 0
    suspected: set[str] = set()
    last: float | None = None
    for path in logs:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        since: dict[str, float] = {}
        for m in STATE_LINE.finditer(text):
            t = _stamp(m.groups()[:4], day)
            if not start <= t <= end:
                continue
            member, state = m.group(5), m.group(6)
            if state == "suspect":
                suspicions += 1
                suspected.add(member)
                since.setdefault(member, t)
                last = t if last is None else max(last, t)
                continue
            deaths += state == "dead"
            began = since.pop(member, None)
            if began is not None:
                held.append(t - began)
    held.sort()
    return SuspicionStorm(
        suspicions=suspicions,
        members_suspected=len(suspected),
        deaths=deaths,
        held_p50_s=round(statistics.median(held), 2) if held else None,
        held_p90_s=round(held[int(0.9 * (len(held) - 1))], 2) if held else None,
        held_max_s=round(held[-1], 2) if held else None,
        last_suspicion_s=None if last is None else round(last - origin, 2),
    )

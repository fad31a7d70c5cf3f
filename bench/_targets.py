"""A benchmark's targets and how it reports them: a Markdown table for people, and with
``--json`` one object, ``{"targets": [{"name", "measured", "target", "met"}], ...details}``,
for the tools that read every benchmark the same way."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    name: str
    #: None when the run could not measure it (never met).
    measured: float | None
    #: How the measured value is judged, as people read it: "<= 5", ">= 0.97", "== 0".
    target: str
    met: bool


def at_most(name: str, measured: float | None, bound: float) -> Target:
    ok = measured is not None and not math.isnan(measured) and measured <= bound
    return Target(name, measured, f"<= {bound:g}", ok)


def at_least(name: str, measured: float | None, bound: float) -> Target:
    ok = measured is not None and not math.isnan(measured) and measured >= bound
    return Target(name, measured, f">= {bound:g}", ok)


def report(targets: list[Target], as_json: bool, **details: Any) -> None:
    """Prints the targets (and the run's other numbers, ``details``) one way or the other."""
    if as_json:
        print(json.dumps({**details, "targets": [asdict(t) for t in targets]}))
        return
    for key, value in details.items():
        print(f"{key:40} {value}")
    print("| target | measured | bound | met |")
    print("|---|---:|---:|---|")
    for t in targets:
        measured = "-" if t.measured is None else f"{t.measured:.4g}"
        print(f"| {t.name} | {measured} | {t.target} | {'yes' if t.met else 'no'} |")

"""A benchmark's targets and how it reports them: a Markdown table for people, and with
``--json`` one object, ``{"targets": [{"name", "measured", "target", "met"}], ...details}``,
for the tools that read every benchmark the same way.

``--json`` (``add_json_flag``) takes an optional file: with no value the object is the only
thing on stdout (a benchmark's human tables and progress then go to stderr: ``human``);
``--json FILE`` writes the object to FILE and leaves the human output on stdout, as the
commands cited in bench/RESULTS.md expect.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: ``--json``'s value when given without a file: the object goes to stdout.
STDOUT = "-"


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
    return Target(name, measured, f"<= {_number(bound)}", ok)


def at_least(name: str, measured: float | None, bound: float) -> Target:
    ok = measured is not None and not math.isnan(measured) and measured >= bound
    return Target(name, measured, f">= {_number(bound)}", ok)


def exactly(name: str, measured: float | None, value: float) -> Target:
    """A correctness check (lost == 0, duplicates == 0): met only at exactly ``value``."""
    ok = measured is not None and measured == value
    return Target(name, measured, f"== {_number(value)}", ok)


def holds(name: str, ok: bool) -> Target:
    """A yes/no check (replicas identical): measured 1 when it holds, 0 when not."""
    return Target(name, 1.0 if ok else 0.0, "== 1", ok)


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json",
        nargs="?",
        const=STDOUT,
        default=None,
        metavar="FILE",
        help='print one JSON object {"targets": [...], ...} as the only output on stdout '
        "(tables go to stderr); with FILE, write it there and print the tables as usual",
    )


def human(json_dest: str | Path | None) -> contextlib.AbstractContextManager[Any]:
    """Where a benchmark's own prints go: stderr while stdout carries the JSON object.

    ``with human(args.json): ...`` around the run, then ``emit`` outside it."""
    if str(json_dest) == STDOUT:
        return contextlib.redirect_stdout(sys.stderr)
    return contextlib.nullcontext()


def document(targets: list[Target], **details: Any) -> dict[str, Any]:
    """The one JSON object: the run's numbers (``details``) and its targets."""
    return {**details, "targets": [asdict(t) for t in targets]}


def emit(json_dest: str | Path | None, targets: list[Target], **details: Any) -> None:
    """Writes the object where ``--json`` said (nothing without ``--json``)."""
    if json_dest is None:
        return
    doc = document(targets, **details)
    if str(json_dest) == STDOUT:
        print(json.dumps(doc, default=_plain))
    else:
        Path(json_dest).write_text(json.dumps(doc, indent=2, default=_plain) + "\n")


def print_table(targets: list[Target]) -> None:
    print("| target | measured | bound | met |")
    print("|---|---:|---:|---|")
    for t in targets:
        measured = "-" if t.measured is None else _number(t.measured)
        print(f"| {t.name} | {measured} | {t.target} | {'yes' if t.met else 'no'} |")


def report(targets: list[Target], as_json: bool | str | None, **details: Any) -> None:
    """Prints the targets (and the run's other numbers, ``details``) one way or the other:
    ``as_json`` True (or ``STDOUT``) prints only the object; a file name writes the object
    there and prints the table too."""
    if as_json is True or as_json == STDOUT:
        emit(STDOUT, targets, **details)
        return
    for key, value in details.items():
        print(f"{key:40} {value}")
    print_table(targets)
    if isinstance(as_json, str) and as_json:
        emit(as_json, targets, **details)


def _number(x: float) -> str:
    """4 significant digits, whole numbers in full (50000, not 5e+04)."""
    if math.isfinite(x) and abs(x) >= 1000:
        return f"{x:.0f}"
    return f"{x:.4g}"


def _plain(o: Any) -> Any:
    """JSON for what ``json`` does not know: dataclasses (rows), sets, paths."""
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    if isinstance(o, set | frozenset):
        return sorted(o)
    return str(o)

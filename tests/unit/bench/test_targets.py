"""The benchmarks' one reporting contract (bench/_targets.py): ``--json`` alone puts one JSON
object, ``{"targets": [{"name", "measured", "target", "met"}], ...}``, and nothing else on
stdout; ``--json FILE`` writes it to FILE; without it nothing JSON is written."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from bench._targets import (
    add_json_flag,
    at_least,
    at_most,
    emit,
    exactly,
    holds,
    human,
    report,
)

KEYS = {"name", "measured", "target", "met"}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_json_flag(p)
    p.add_argument("--small", action="store_true")
    return p.parse_args(argv)


def test_json_flag_takes_an_optional_file() -> None:
    assert parse([]).json is None
    assert parse(["--json"]).json == "-"
    assert parse(["--json", "--small"]).json == "-"
    assert parse(["--json", "out.json"]).json == "out.json"


def test_bounds_judge_the_measured_value() -> None:
    assert at_most("a", 1.0, 1.0).met and not at_most("a", 1.01, 1.0).met
    assert at_least("b", 3.0, 3.0).met and not at_least("b", 2.9, 3.0).met
    assert exactly("lost", 0, 0).met and not exactly("lost", 1, 0).met
    assert holds("same", True).measured == 1.0 and not holds("same", False).met
    # What a run could not measure is never met.
    for t in (at_most("x", None, 1), at_least("x", math.nan, 1), exactly("x", None, 0)):
        assert not t.met
    assert at_most("c", 2, 1.15).target == "<= 1.15"


def test_json_alone_prints_one_object_and_the_tables_go_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = parse(["--json"])
    with human(args.json):
        print("a human table")
    emit(args.json, [at_most("p99 (s)", 0.4, 1), exactly("lost", 2, 0)], rows=[{"n": 1}])
    out, err = capsys.readouterr()
    doc = json.loads(out)  # the whole of stdout is one object
    assert "a human table" in err and "a human table" not in out
    assert doc["rows"] == [{"n": 1}]
    assert [set(t) for t in doc["targets"]] == [KEYS, KEYS]
    assert [t["met"] for t in doc["targets"]] == [True, False]


def test_json_file_keeps_the_tables_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "out.json"
    args = parse(["--json", str(dest)])
    with human(args.json):
        print("a human table")
    emit(args.json, [at_least("x ideal", 3.5, 3)], tasks=100)
    out, _ = capsys.readouterr()
    assert out == "a human table\n"
    doc = json.loads(dest.read_text())
    assert doc["tasks"] == 100 and doc["targets"][0]["met"] is True


def test_report_keeps_its_boolean_form(capsys: pytest.CaptureFixture[str]) -> None:
    report([at_most("a", 1, 2)], True, nodes=3)
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"nodes": 3, "targets": [{"name": "a", "measured": 1, "target": "<= 2",
                                           "met": True}]}  # fmt: skip
    report([at_most("a", 1, 2)], False, nodes=3)
    assert "| a | 1 | <= 2 | yes |" in capsys.readouterr().out

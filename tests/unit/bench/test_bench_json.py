"""Benchmarks that conform to bench/_targets.py's contract, run at their smallest in this
process where that takes seconds (the simulator's, the pure state core's), and the target
rules of those that start daemons, fed made-up rows."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import chaos, state_core, tasks_cluster, tasks_sim
from bench._targets import emit

KEYS = {"name", "measured", "target", "met"}


def only_object(out: str) -> dict[str, Any]:
    doc = json.loads(out)  # fails on anything printed beside the object
    assert isinstance(doc, dict)
    assert doc["targets"], "a benchmark reports at least one target"
    for t in doc["targets"]:
        assert set(t) == KEYS, t
        assert isinstance(t["met"], bool)
    return doc


def test_tasks_sim_small_prints_one_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert tasks_sim.main(["--small", "--json"]) == 0
    out, err = capsys.readouterr()
    doc = only_object(out)
    assert "(a) 4 nodes" in err  # the tables still show, on stderr
    names = {t["name"]: t for t in doc["targets"]}
    assert (
        names["(a) work stealing: makespan / ideal"]["measured"]
        == doc["a/work_stealing"]["x_ideal"]
    )
    assert names["(d) crash: lost tasks, every policy"]["met"]
    assert doc["tasks"] == 100


def test_tasks_sim_compare_reads_the_cluster_benchmarks_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What ``tasks_cluster --json`` writes, ``tasks_sim --compare`` reads; a cluster row far
    from the simulation is reported as a missed agreement target (and exit status 1)."""
    rows = [
        tasks_cluster.Row("uniform", "local", 100, 2.1, 0.3, 0.5, 4.2, {"n1": 100}),
        tasks_cluster.Row("source", "local", 8, 1.7, 0.01, 0.4, 4.25, {"n1": 8}),
        tasks_cluster.Row("source", "work_stealing", 8, 40.0, 0.01, 0.4, 100.0,
                          {"n1": 2, "n2": 2, "n3": 2, "n4": 2}),
    ]  # fmt: skip
    cluster = tmp_path / "cluster.json"
    made_with = {"tasks": 100, "ms": 20.0, "seed": 1}
    emit(str(cluster), tasks_cluster.targets(rows, []), plan=made_with, policies=rows, kill=[])
    assert tasks_sim.main(["--compare", str(cluster), "--json"]) == 1
    doc = only_object(capsys.readouterr().out)
    agreement = [t for t in doc["targets"] if "simulated / cluster" in t["name"]]
    assert len(agreement) == 1 and "work_stealing" in agreement[0]["name"]
    assert not agreement[0]["met"]
    assert doc["shared/source/work_stealing"]["cluster_x_ideal"] == 100.0
    # Simulated at the cluster run's size (--tasks 100), not the default 400.
    assert sum(doc["shared/uniform/local"]["per_node"].values()) == 100


def test_tasks_sim_compare_refuses_a_file_that_is_not_the_cluster_output(tmp_path: Path) -> None:
    wrong = tmp_path / "scale.json"
    wrong.write_text('{"targets": []}')
    with pytest.raises(SystemExit, match=r"bench\.tasks_cluster --json"):
        tasks_sim.main(["--compare", str(wrong)])


def row(policy: str, makespan: float, ratio: float, **kw: Any) -> tasks_cluster.Row:
    return tasks_cluster.Row("uniform", policy, 400, makespan, 1.0, 2.0, ratio, **kw)


def test_tasks_cluster_targets_for_the_rows_that_ran() -> None:
    ws = row("work_stealing", 2.2, 1.1, steals_per_task=0.2)
    by_name = {t.name: t for t in tasks_cluster.targets([ws, row("local", 8.0, 4.0)], [])}
    assert by_name["uniform, work stealing: speed-up over local only"].measured == pytest.approx(
        8.0 / 2.2, abs=1e-3
    )
    assert all(t.met for t in by_name.values())
    # Without a local-only row there is no speed-up to report, and a duplicate is a fault.
    alone = tasks_cluster.targets([row("work_stealing", 2.2, 1.1, duplicates=1)], [])
    assert not any("speed-up" in t.name for t in alone)
    assert [t.name for t in alone if not t.met] == ["duplicate deliveries, every policy row"]
    kill = tasks_cluster.KillRow(400, 30, 2.1, 3.4, 0, 0)
    missed = [t.name for t in tasks_cluster.targets([], [kill]) if not t.met]
    assert missed == ["kill: its tasks run elsewhere after it is declared dead (s)"]
    # The origin saw none of its tasks on the victim: no rerun was timed.
    unseen = tasks_cluster.targets([], [dataclasses.replace(kill, held_by_victim=0)])
    assert [t.measured for t in unseen if "run elsewhere" in t.name] == [None]


def test_state_core_prints_one_object(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["state_core", "--keys", "2000", "--deltas", "2000", "--json"])
    state_core.main()
    doc = only_object(capsys.readouterr().out)
    assert doc["catch_up"]["keys"] == 2000
    largest = [t for t in doc["targets"] if "largest message" in t["name"]]
    assert largest[0]["measured"] == doc["catch_up"]["largest_message"] and largest[0]["met"]


def chaos_report(**changes: Any) -> chaos.Report:
    clean = chaos.Report(
        nodes=5, duration_s=30.0, faults=["SIGKILL n2"], operations=900, acknowledged_puts=200,
        acknowledged_increments=200, acknowledged_set_adds=200, failed=0, unknown_outcome=3,
        lost_puts=0, lost_set_elements=0, acknowledged_tasks=300, lost_tasks=0,
        duplicated_task_results=0, acknowledged_models=5, lost_models=0,
        under_replicated_models=0, counter_values=[201] * 5, counter_exact=True, duplicated=0,
        replicas_identical=True, membership_agreed=True, converge_after_last_fault_s=0.5,
        fault_recovery_s={}, rss_growth_pct={"n1": 4.0, "n4": 9.0},
    )  # fmt: skip
    return dataclasses.replace(clean, **changes)


def test_chaos_targets_carry_the_checkers_verdicts() -> None:
    good = chaos.targets(chaos_report())
    assert all(t.met for t in good) and chaos_report().ok
    growth = [t for t in good if t.name.startswith("RSS growth")]
    assert growth[0].measured == 9.0
    bad = chaos_report(lost_tasks=2, replicas_identical=False, converge_after_last_fault_s=9.0)
    missed = {t.name: t.measured for t in chaos.targets(bad) if not t.met}
    assert missed == {
        "acknowledged tasks lost": 2,
        "replicas identical at the end": 0.0,
        "identical replicas after the last restart (s)": 9.0,
    }
    # No daemon ran the whole run unrestarted: nothing to measure, so not met.
    unmeasured = chaos.targets(chaos_report(rss_growth_pct={}))
    assert [t.measured for t in unmeasured if not t.met] == [None]

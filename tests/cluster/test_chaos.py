"""The chaos run of ``bench/chaos.py`` at CI size: five real daemons under a load of durable
writes, task submissions and model publishes through SIGKILL + restart, a partition (where
namespaces exist), packet loss, SIGSTOP/SIGCONT and a second SIGKILL; then the checker over
the whole history."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import run

pytestmark = pytest.mark.cluster


def test_no_acknowledged_write_is_lost_under_faults(tmp_path: Path) -> None:
    report = run(nodes=5, duration=30.0, seed=7, root=tmp_path)
    assert report.acknowledged_puts > 0 and report.acknowledged_increments > 0
    assert report.lost_puts == 0
    assert report.lost_set_elements == 0
    assert report.counter_exact, (report.counter_values, report.acknowledged_increments)
    assert report.duplicated == 0
    assert report.acknowledged_tasks > 0
    assert report.lost_tasks == 0 and report.duplicated_task_results == 0
    assert report.acknowledged_models > 0
    assert report.lost_models == 0 and report.under_replicated_models == 0
    assert report.replicas_identical
    assert report.membership_agreed

"""The state simulator: replicas on a lossy, partitioned SimNetwork converge exactly."""

from __future__ import annotations

from p2pagent.sim.state import StateScenario, simulate


def test_partition_loss_and_late_joiner_converge() -> None:
    sc = StateScenario(
        nodes=5,
        keys=80,
        writes=600,
        write_window=2.0,
        loss=0.2,
        duplicate=0.1,
        partition=(0.5, 2.5),
        join_at=1.5,
        max_message_bytes=16 * 1024,
        seed=3,
    )
    result = simulate(sc)
    assert result.converged, result
    assert result.counters_exact
    assert len(result.digests) == 1
    assert result.largest_message <= 16 * 1024


def test_same_seed_same_run() -> None:
    sc = StateScenario(nodes=3, keys=20, writes=100, write_window=1.0, loss=0.1, seed=9)
    assert simulate(sc) == simulate(sc)

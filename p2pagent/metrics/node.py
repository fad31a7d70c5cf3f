"""Registers a node's metrics: the one place that reads the drivers for them.

Each reader builds a concern's snapshot from the drivers' own counters; the scheduler, the
models driver and the others keep plain counters and know nothing of Prometheus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from p2pagent._proto import agent_pb2
from p2pagent.inference.stats import ModelStats
from p2pagent.metrics import generation, inference, membership, models, state, tasks, training
from p2pagent.metrics.build import register_build_info
from p2pagent.metrics.families import SnapshotCollector

if TYPE_CHECKING:
    from p2pagent.node import Node

AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


def register_node_metrics(registry: CollectorRegistry, node: Node) -> None:
    register_build_info(registry)
    registry.register(SnapshotCollector(lambda: membership_snapshot(node), membership.render))
    registry.register(SnapshotCollector(lambda: state_snapshot(node), state.render))
    registry.register(SnapshotCollector(lambda: models_snapshot(node), models.render))
    registry.register(SnapshotCollector(lambda: tasks_snapshot(node), tasks.render))
    registry.register(SnapshotCollector(lambda: inference_snapshot(node), inference.render))
    registry.register(SnapshotCollector(lambda: training_snapshot(node), training.render))
    registry.register(SnapshotCollector(lambda: node.generation_relays, generation.render))


def membership_snapshot(node: Node) -> membership.MembershipSnapshot | None:
    driver = node.membership
    counters = driver.counters()
    if counters is None:
        return None
    by_state: dict[str, int] = {}
    for m in driver.members():
        by_state[m.state] = by_state.get(m.state, 0) + 1
    return membership.MembershipSnapshot(
        members=by_state,
        incarnation=driver.incarnation,
        probes=counters.probes,
        probe_failures=counters.probe_failures,
        suspicions=counters.suspicions,
        refutations=counters.refutations,
        deaths_declared=counters.deaths_declared,
        push_pulls=counters.push_pulls,
        awareness=driver.awareness,
        late_ticks=counters.late_ticks,
        corrections=counters.corrections,
    )


def state_snapshot(node: Node) -> state.StateSnapshot | None:
    driver = node.state
    replica = driver.loaded
    if replica is None:
        return None
    return state.StateSnapshot(
        keys=replica.key_count,
        messages=dict(driver.traffic.messages),
        bytes=dict(driver.traffic.bytes),
        watch_streams=node.metrics.open_streams(AGENT_SERVICE, "Watch"),
    )


def models_snapshot(node: Node) -> models.ModelsSnapshot:
    driver = node.models
    counts = driver.pull_counts
    return models.ModelsSnapshot(
        versions_held=driver.versions_held(),
        pulls_in_progress=counts.running,
        pulls_completed=counts.completed,
        pulls_failed=counts.failed,
        bytes_pulled=counts.fetched_bytes,
        corrupt_chunks=counts.corrupt_chunks,
    )


def tasks_snapshot(node: Node) -> tasks.TasksSnapshot:
    driver = node.tasks
    return tasks.TasksSnapshot(
        queued=driver.queue.n_queued,
        running=driver.running,
        backlog_s=driver.backlog_s() + node.engine.estimated_backlog_s(),
        completed=driver.core.stats.completed,
        stolen_in=driver.core.stats.stolen_in,
        stolen_out=driver.core.stats.stolen_out,
        steal_requests=driver.core.steal.attempts,
        leases_lost=driver.leases.leases_lost,
    )


def inference_snapshot(node: Node) -> list[ModelStats]:
    return sorted(node.engine.stats().values(), key=lambda s: s.model)


def training_snapshot(node: Node) -> list[training.RunSnapshot]:
    driver = node.training
    return [
        training.RunSnapshot(
            run=name,
            members=len(driver.participants(name)),
            rounds=run.stats.rounds,
            last_round=run.stats.last_round,
            last_round_s=run.stats.last_round_s,
            phase_timeout_s=run.stats.phase_timeout_s,
            bytes_sent=run.stats.bytes_sent,
            bytes_received=run.stats.bytes_received,
            refused=run.stats.refused,
            incomplete_rounds=run.stats.incomplete_rounds,
        )
        for name, run in sorted(driver.runs.items())
    ]

"""A registry with every family a node exports, filled from made-up snapshots (for tests
that check names and rendering without starting a node)."""

from __future__ import annotations

from p2pagent.inference.generation.relay_stats import RelayCounts
from p2pagent.inference.stats import ModelStats
from p2pagent.metrics import generation, inference, membership, models, state, tasks, training
from p2pagent.metrics.build import register_build_info
from p2pagent.metrics.families import SnapshotCollector
from p2pagent.transport.metrics import RpcMetrics


def _stats(model: str, sizes: tuple[tuple[int, int], ...]) -> ModelStats:
    rows = sum(r * n for r, n in sizes)
    batches = sum(n for _r, n in sizes)
    return ModelStats(
        model,
        3,
        10,
        1,
        2,
        0,
        batches,
        batches,
        rows,
        1,
        0.01,
        batch_sizes=sizes,
        queue_s=0.25,
        tokens=300,
        padded_tokens=360,
    )


def sample_registry() -> RpcMetrics:
    rpc = RpcMetrics()
    register_build_info(rpc.registry)
    reg = rpc.registry
    reg.register(
        SnapshotCollector(
            lambda: membership.MembershipSnapshot(
                {"alive": 2, "dead": 1},
                4,
                100,
                3,
                2,
                1,
                1,
                5,
                awareness=3,
                late_ticks=6,
                corrections=7,
            ),
            membership.render,
        )
    )
    reg.register(
        SnapshotCollector(
            lambda: state.StateSnapshot(
                7, {("sent", "delta"): 9}, {("sent", "delta"): 900}, watch_streams=2
            ),
            state.render,
        )
    )
    reg.register(
        SnapshotCollector(lambda: models.ModelsSnapshot(2, 0, 3, 1, 4096, 1), models.render)
    )
    reg.register(
        SnapshotCollector(lambda: tasks.TasksSnapshot(5, 2, 12.5, 40, 3, 4, 6, 1), tasks.render)
    )
    reg.register(SnapshotCollector(lambda: [_stats("m", ((1, 2), (8, 3)))], inference.render))
    reg.register(
        SnapshotCollector(
            lambda: [training.RunSnapshot("digits", 4, 12, 11, 0.8, 2.5, 4096, 4000, 1, 2)],
            training.render,
        )
    )
    relays = RelayCounts(placed_locally=9, relayed_out=4, moved=3, relayed_in=2, refused=1)
    reg.register(SnapshotCollector(lambda: relays, generation.render))
    handle = rpc.rpc("/p2pagent.v1.AgentService/Watch", "server_stream")
    handle.started()
    handle.handled("OK", 7200.0)
    handle.started()  # one still open
    rpc.dropped_payloads.labels("state_malformed").inc()
    rpc.rpc("/p2pagent.v1.AgentService/Status", "unary").started()
    rpc.rpc("/p2pagent.v1.AgentService/Status", "unary").handled("OK", 0.002)
    return rpc

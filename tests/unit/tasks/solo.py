"""A task driver alone in its mesh (no peer is ever called), over a fake engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2pagent.membership.view import StaticDirectory
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.driver import TasksDriver
from p2pagent.testing.peer_link import MemoryPeers
from p2pagent.transport.metrics import RpcMetrics


def solo_driver(engine: Any, data_dir: Path, model: str, capacity: int) -> TasksDriver:
    """Not started yet; ``engine`` needs ``infer``, ``marginal_seconds_per_row`` and
    ``batching_measured``."""
    return TasksDriver(
        "solo",
        TasksConfig(placement="local"),
        capacity=capacity,
        engine=engine,
        models=lambda: [model],
        data_dir=data_dir,
        channels=None,
        peers=MemoryPeers().link("solo"),  # alone: every peer is unreachable
        members=StaticDirectory("solo"),
        metrics=RpcMetrics(),
    )

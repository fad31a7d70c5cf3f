"""Model sharing metrics: versions held, pulls, bytes pulled, chunks that failed
verification."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric

from p2pagent.metrics.families import counter, gauge


@dataclass(frozen=True)
class ModelsSnapshot:
    versions_held: int
    pulls_in_progress: int
    pulls_completed: int
    pulls_failed: int
    bytes_pulled: int
    corrupt_chunks: int


def render(s: ModelsSnapshot) -> Iterator[Metric]:
    yield gauge(
        "p2pagent_models_versions_held",
        "Model versions held complete on this node",
        s.versions_held,
    )
    yield gauge("p2pagent_models_pulls_in_progress", "Pulls running now", s.pulls_in_progress)
    yield counter("p2pagent_models_pulls", "Pulls that completed", s.pulls_completed)
    yield counter("p2pagent_models_pull_failures", "Pulls that ended in an error", s.pulls_failed)
    yield counter(
        "p2pagent_models_pulled_bytes", "Chunk bytes fetched from other nodes", s.bytes_pulled
    )
    yield counter(
        "p2pagent_models_chunk_verification_failures",
        "Chunks received whose hash did not match the manifest (the holder is banned)",
        s.corrupt_chunks,
    )

"""Shared helpers for the model-sharing tests: small chunks, deterministic content."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from p2pagent.models.config import ModelsConfig
from p2pagent.models.store import ChunkStore

CHUNK = 4096


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def store(tmp_path: Path) -> ChunkStore:
    return ChunkStore(tmp_path / "models", ModelsConfig(chunk_size=CHUNK, fsync=False))

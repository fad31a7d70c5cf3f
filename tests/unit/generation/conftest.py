"""Tiny GPT-2 and Llama folders, built once per test session (a few seconds each)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from p2pagent.testing.decoder_folders import BUILDERS


@pytest.fixture(scope="session")
def decoder_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decoders")
    return {family: build(root / family) for family, build in BUILDERS.items()}


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tiny models gain nothing from more threads, and on a machine shared with other
    work, OpenMP threads that spin for cores they do not get make each step many times
    slower. Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)

"""Tiny GPT-2 and Llama folders, built once per test session (a few seconds each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pagent.testing.decoder_folders import BUILDERS


@pytest.fixture(scope="session")
def decoder_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decoders")
    return {family: build(root / family) for family, build in BUILDERS.items()}

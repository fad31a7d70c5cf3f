from __future__ import annotations

from pathlib import Path

import pytest

from p2pagent.inference import demo_model


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every file ``python -m p2pagent.inference.demo_model`` writes, built once."""
    return demo_model.write_all(tmp_path_factory.mktemp("demo"))

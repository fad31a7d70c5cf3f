"""A node that serves no model imports only what it needs to start: the numeric and model
stacks (numpy, torch, transformers) and the OpenAI door's web stack load on first use.

Each module is paid by every daemon on every start: before this was checked, a node imported
numpy through the tasks layer's tensor checks and the training API, ~85 more modules."""

from __future__ import annotations

import json
from pathlib import Path

from p2pagent.testing.daemon import Daemon
from p2pagent.testing.startup_modules import OUT

#: Top-level packages a node without a model, door or training run must not import.
DEFERRED = (
    "numpy",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "sentence_transformers",
    "sklearn",
    "scipy",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
)


def _modules_at_ready(tmp_path: Path, certs_dir: Path) -> list[str]:
    out = tmp_path / "modules.json"
    d = Daemon(
        "n1",
        certs_dir,
        tmp_path / "n1",
        module="p2pagent.testing.startup_modules",
        env={OUT: str(out)},
    )
    try:
        d.start(timeout=60)
    finally:
        d.stop()
    modules: list[str] = json.loads(out.read_text())["modules"]
    return modules


def test_a_node_without_a_model_starts_without_the_model_stacks(
    tmp_path: Path, certs_dir: Path
) -> None:
    modules = _modules_at_ready(tmp_path, certs_dir)
    # The report is real: the daemon's own modules are in it.
    assert "p2pagent.node" in modules
    assert "p2pagent.membership.swim" in modules
    loaded = sorted({m.split(".")[0] for m in modules} & set(DEFERRED))
    assert loaded == [], (
        f"a node with no model imported {loaded} at start-up; import them where they are "
        "first used (see p2pagent/inference/tensor_checks.py for why)"
    )

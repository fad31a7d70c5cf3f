"""One daemon serving the demo model, for the tests that run tasks or inference through it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from p2pagent.testing.daemon import Daemon


def serve_args(models: Path) -> list[str]:
    """Daemon flags that serve ``models``' demo TorchScript file as model ``demo``."""
    return ["--serve", f"demo={models / 'demo.torchscript.pt'}"]


def expected(models: Path, x: torch.Tensor) -> torch.Tensor:
    """What the demo model answers for ``x``, computed offline."""
    module = torch.jit.load(str(models / "demo.torchscript.pt"))
    with torch.inference_mode():
        return module(x)  # type: ignore[no-any-return]


@contextmanager
def running(name: str, certs_dir: Path, data: Path, models: Path) -> Iterator[Daemon]:
    """A started daemon serving ``demo``, killed on the way out."""
    d = Daemon(name, certs_dir, data, args=serve_args(models))
    d.start()
    try:
        yield d
    finally:
        d.kill()

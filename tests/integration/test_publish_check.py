"""The publish check's child process under its limits: a model that runs past the time limit
is stopped and refused, one that needs more address space than allowed is refused, and a
model that loads and runs passes. (Each case starts a real child interpreter.)"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from pathlib import Path

import pytest
import torch

from p2pagent.errors import InvalidArgument
from p2pagent.inference.sandbox import landlock_abi
from p2pagent.models.publish_check import CheckSlots, Confinement, check_model

EMPTY = b'{"__metadata__":{}}'


def tensorless_safetensors(path: Path) -> Path:
    path.write_bytes(struct.pack("<Q", len(EMPTY)) + EMPTY)
    return path


def busy_spec(ms_per_batch: float) -> dict[str, object]:
    return {
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 4]}],
        "outputs": [{"name": "output", "dtype": "float32", "shape": [-1, 4]}],
        "architecture": "busy",
        "arch_config": {"features": 4, "ms_per_row": 0, "ms_per_batch": ms_per_batch},
    }


def test_a_model_that_loads_and_runs_passes(tmp_path: Path) -> None:
    path = tensorless_safetensors(tmp_path / "m.safetensors")
    seconds = asyncio.run(
        check_model(path, "safetensors", busy_spec(0), timeout_s=120, memory_bytes=4 << 30)
    )
    assert seconds > 0


def test_a_model_that_runs_past_the_time_limit_is_stopped_and_refused(tmp_path: Path) -> None:
    path = tensorless_safetensors(tmp_path / "m.safetensors")
    start = time.monotonic()
    with pytest.raises(InvalidArgument, match="within 20 s"):
        asyncio.run(
            check_model(path, "safetensors", busy_spec(60_000), timeout_s=20, memory_bytes=4 << 30)
        )
    assert time.monotonic() - start < 55  # stopped at the limit, not after the model's 60 s


def test_a_model_that_needs_more_memory_than_allowed_is_refused(tmp_path: Path) -> None:
    path = tensorless_safetensors(tmp_path / "m.safetensors")
    # Example inputs of 2 x 200M float32 (1.6 GB) under a 1.5 GiB address-space limit.
    spec = busy_spec(0)
    wide = [
        {"name": n, "dtype": "float32", "shape": [-1, 200_000_000]} for n in ("input", "output")
    ]
    spec["inputs"], spec["outputs"] = wide[:1], wide[1:]
    spec["arch_config"] = {"features": 200_000_000}
    with pytest.raises(InvalidArgument, match="allocate") as e:
        asyncio.run(check_model(path, "safetensors", spec, timeout_s=120, memory_bytes=3 << 29))
    assert "1600000000 bytes" in str(e.value)
    # A limit too small for torch itself is named as such.
    with pytest.raises(InvalidArgument, match="address space"):
        asyncio.run(
            check_model(path, "safetensors", busy_spec(0), timeout_s=120, memory_bytes=64 << 20)
        )


class _ReadsAFile(torch.nn.Module):
    """Model code that reads a file: ``torch.from_file`` is an op TorchScript keeps."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        secret = torch.from_file(self.path, shared=False, size=4, dtype=torch.uint8)
        return x + secret.sum().to(x.dtype) * 0


def test_model_code_in_the_check_cannot_read_what_the_node_protects(tmp_path: Path) -> None:
    if not landlock_abi() and os.getuid() != 0:
        pytest.skip("neither Landlock nor a root daemon to switch uid here")
    protected = tmp_path / "node-data"
    protected.mkdir()
    secret = protected / "node.key"
    secret.write_bytes(b"SECRET-KEY-BYTES")
    model = tmp_path / "reads.torchscript.pt"
    torch.jit.script(_ReadsAFile(str(secret))).save(str(model))
    spec = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 3]}],
    }

    def check(confinement: Confinement | None) -> float:
        return asyncio.run(
            check_model(
                model, "torchscript", spec, timeout_s=120, memory_bytes=4 << 30,
                confinement=confinement,
            )
        )  # fmt: skip

    assert check(None) > 0  # unconfined, the same code reads the file and passes
    with pytest.raises(InvalidArgument, match="raised") as refused:
        check(Confinement(worker_uid=-1, protected=(protected,)))
    assert "SECRET" not in str(refused.value)


def test_a_warm_child_checks_under_the_same_limits_and_holds_its_slot(tmp_path: Path) -> None:
    """A child started before the upload ends (``CheckSlots.warm``) passes a good model,
    refuses a bad one like a cold child, and holds a check slot until it is closed."""

    async def run() -> None:
        slots = CheckSlots(1)
        warm = await slots.warm("safetensors", confined=False)
        assert warm is not None
        assert await slots.warm("safetensors", confined=False) is None  # the one slot is taken
        path = tensorless_safetensors(tmp_path / "m.safetensors")
        assert await slots.check(path, "safetensors", busy_spec(0), warm=warm, timeout_s=120,
                                 memory_bytes=4 << 30, confinement=None) > 0  # fmt: skip
        bad = await slots.warm("safetensors", confined=False)  # the slot is free again
        assert bad is not None
        spec = busy_spec(0)
        spec["outputs"] = [{"name": "output", "dtype": "int64", "shape": [-1, 4]}]
        with pytest.raises(InvalidArgument, match="declares int64"):
            await slots.check(path, "safetensors", spec, warm=bad, timeout_s=120,
                              memory_bytes=4 << 30, confinement=None)  # fmt: skip
        unused = await slots.warm("safetensors", confined=False)  # an upload cut off
        assert unused is not None
        work = unused.work
        unused.close()
        assert not work.exists()
        assert await slots.warm("export", confined=True) is None  # code: fenced first, cold
        again = await slots.warm("safetensors", confined=False)
        assert again is not None
        again.close()

    asyncio.run(run())

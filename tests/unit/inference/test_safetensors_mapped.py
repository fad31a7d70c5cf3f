"""Safetensors read through a memory map (the publish check's child) gives the same tensors
and metadata as the file read whole, the tensors own their memory (the map can go), and the
same errors for a malformed file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from p2pagent.errors import InvalidArgument
from p2pagent.inference import safetensors_io


def test_mapped_load_equals_the_whole_file_read(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    tensors = {
        "a": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "b": torch.tensor([1, -2, 3], dtype=torch.int64),
        "empty": torch.zeros((0, 5), dtype=torch.float16),
    }
    safetensors_io.save(tensors, path, {"k": "v"})
    whole, meta_whole = safetensors_io.load(path)
    mapped, meta_mapped = safetensors_io.load(path, mapped=True)
    assert meta_whole == meta_mapped == {"k": "v"}
    assert set(mapped) == set(tensors)
    for name, t in tensors.items():
        assert torch.equal(mapped[name], t) and torch.equal(whole[name], t)
    # Each tensor owns its memory: changing the file afterwards changes none of them.
    path.write_bytes(b"\0" * path.stat().st_size)
    assert torch.equal(mapped["a"], tensors["a"])


def test_mapped_load_refuses_what_the_whole_read_refuses(tmp_path: Path) -> None:
    for content in (b"", b"\x01\x00\x00\x00\x00\x00\x00\x00", b"\xff" * 16):
        path = tmp_path / "bad.safetensors"
        path.write_bytes(content)
        for mapped in (False, True):
            with pytest.raises(InvalidArgument, match="not a valid safetensors"):
                safetensors_io.load(path, mapped=mapped)

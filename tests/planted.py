"""Model files with a pickle planted where a loader might unpickle it, for tests that show no
such pickle ever runs: each payload, if unpickled, would create ``marker`` (``touch``).

Every builder writes one file and returns its path; ``planted_models`` builds them all with
the format name a publish header gives and whether a node must refuse it at publish (the
safetensors one holds its pickle as plain bytes, which nothing unpickles, so it may be
published and run). Imports torch: tests only.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

#: Input and output width of the planted models (metadata: ``spec``).
IN, OUT = 4, 2


@dataclass(frozen=True)
class Planted:
    path: Path
    format: str  # as in a publish header: torchscript | export | safetensors
    #: Whether a node must refuse it at publish (it would make a loader unpickle).
    refused: bool
    metadata: dict[str, object]


class _Payload:
    """Pickles as a call to ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def payload(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker), protocol=2)


def torch_saved_payload(marker: Path) -> bytes:
    """The payload as ``torch.save`` writes it (a zip holding ``data.pkl``)."""
    buf = io.BytesIO()
    torch.save(_Payload(marker), buf)
    return buf.getvalue()


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(IN, OUT)
        self.register_buffer("offset", torch.zeros(OUT))
        self.scale = torch.tensor([1.0])  # a tensor constant in an exported program

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layer(x) * self.scale + self.offset
        return out


def spec() -> dict[str, object]:
    return {
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, IN]}],
        "outputs": [{"name": "output", "dtype": "float32", "shape": [-1, OUT]}],
    }


def noop_spec() -> dict[str, object]:
    return {
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, IN]}],
        "outputs": [{"name": "output", "dtype": "float32", "shape": [-1, IN]}],
        "architecture": "noop",
        "arch_config": {"features": IN},
    }


def torchscript(path: Path) -> Path:
    torch.jit.save(torch.jit.script(_Linear()), str(path))
    return path


def exported(path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(
        _Linear(), (torch.zeros(2, IN),), dynamic_shapes={"x": {0: batch}}
    )
    torch.export.save(program, str(path))
    return path


def _rewrite(src: Path, dst: Path, change: Callable[[str, bytes], bytes]) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, change(name, zin.read(name)))
    return dst


def _mark_pickled(config: bytes, key: str) -> bytes:
    doc = json.loads(config)
    doc["config"][key]["use_pickle"] = True
    return json.dumps(doc).encode()


def planted_models(out: Path, marker: Path) -> dict[str, Planted]:
    """Every planted file, by a short label."""
    out.mkdir(parents=True, exist_ok=True)
    ts = torchscript(out / "clean.pt")
    pt2 = exported(out / "clean.pt2")
    raw, saved = payload(marker), torch_saved_payload(marker)
    files: dict[str, Planted] = {}

    def ts_entry(entry: str) -> Path:
        return _rewrite(
            ts, out / f"ts-{entry}.pt", lambda n, d: raw if n.endswith("/" + entry) else d
        )

    files["torchscript data.pkl"] = Planted(ts_entry("data.pkl"), "torchscript", True, spec())
    files["torchscript constants.pkl"] = Planted(
        ts_entry("constants.pkl"), "torchscript", True, spec()
    )

    def constant(name: str, data: bytes) -> bytes:
        if name.endswith("model_constants_config.json"):
            return _mark_pickled(data, "scale")
        return saved if name.endswith("data/constants/tensor_0") else data

    with zipfile.ZipFile(pt2) as z:
        config_name = next(n for n in z.namelist() if n.endswith("model_weights_config.json"))
        fqn, meta = next(iter(json.loads(z.read(config_name))["config"].items()))

    def weight(name: str, data: bytes) -> bytes:
        if name == config_name:
            return _mark_pickled(data, fqn)
        return saved if name.endswith("data/weights/" + meta["path_name"]) else data

    def opaque(name: str, data: bytes) -> bytes:
        if name.endswith("model_constants_config.json"):
            doc = json.loads(data)
            doc["config"]["scale"]["path_name"] = "opaque_obj_0"
            return json.dumps(doc).encode()
        return raw if name.endswith("data/constants/tensor_0") else data

    def sample(name: str, data: bytes) -> bytes:
        return saved if "/data/sample_inputs/" in name else data

    files["export constant"] = Planted(
        _rewrite(pt2, out / "export-constant.pt2", constant), "export", True, spec()
    )
    files["export weight"] = Planted(
        _rewrite(pt2, out / "export-weight.pt2", weight), "export", True, spec()
    )
    files["export opaque object"] = Planted(
        _rewrite(pt2, out / "export-opaque.pt2", opaque), "export", True, spec()
    )
    files["export sample inputs"] = Planted(
        _rewrite(pt2, out / "export-sample.pt2", sample), "export", True, spec()
    )
    files["safetensors"] = Planted(safetensors(out / "planted.safetensors", raw), "safetensors",
                                   False, noop_spec())  # fmt: skip
    return files


def safetensors(path: Path, pickle_bytes: bytes) -> Path:
    """A tensor-less safetensors file whose metadata and data area hold the pickle."""
    header = json.dumps({"__metadata__": {"payload": pickle_bytes.decode("latin-1")}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + pickle_bytes)
    return path

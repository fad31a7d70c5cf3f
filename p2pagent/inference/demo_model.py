"""Builds the demo models: ``python -m p2pagent.inference.demo_model --out DIR``.

Deterministic (seeded, no downloads). The ``demo`` model is an MLP 256 -> 1024 -> 1024 -> 10:
small enough for CI, yet at batch 1 a forward pass is dominated by reading its 5 MB of
weights and by per-call overhead, so batching pays off clearly even on a CPU. It is written
in every format the engine loads, with its metadata and a sample input:

- demo.torchscript.pt, demo.pt2, demo.safetensors + demo.arch.json
- demo.metadata.json (a ModelSpec), sample_input.npy and sample_input.json (batch of 1)
- noop.safetensors + noop.arch.json + noop.metadata.json, noop.torchscript.pt: the identity
  model, for measuring everything but the model.

``write_large`` (``--large``) writes ``demo-large.torchscript.pt`` and its metadata, an MLP
1024 -> 3 x 4096 -> 1000 (168 MB): a model whose forward pass, not the RPC around it,
dominates a request (about 9 ms at batch 1 and 1.3 ms a row at batch 32 on one CPU core), as
with the models an inference server is for; the batching benchmark uses it beside ``demo``.
Not written by ``write_all``: the tests do not need 168 MB per run.

``write_gpu`` (``--gpu``) writes ``demo-gpu.torchscript.pt``, sized for a GPU: 1024 -> 8192,
then one 8192 x 8192 layer applied ``depth`` times (weights shared, so the file stays 305 MB),
then -> 1000. On a GPU each application reads the layer's 256 MB from memory, so a forward
pass costs about the same at batch 1 as at batch 32 (memory-bound, like an LLM's decoding
step) and takes milliseconds: the regime where an inference server's batching pays, and
where the RPC around a request is not the bound. Too slow for a CPU at any useful depth.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from p2pagent.inference import architectures, safetensors_io
from p2pagent.inference.spec import ModelSpec

DEMO_IN = 256
DEMO_CONFIG = {"in": DEMO_IN, "hidden": [1024, 1024], "out": 10}
NOOP_CONFIG = {"features": 256}
LARGE_IN = 1024
LARGE_OUT = 1000
LARGE_CONFIG = {"in": LARGE_IN, "hidden": [4096, 4096, 4096], "out": LARGE_OUT}
SEED = 20240601


def build_demo() -> tuple[torch.nn.Module, ModelSpec]:
    torch.manual_seed(SEED)
    arch = architectures.get("mlp")
    return arch.build(DEMO_CONFIG).eval(), arch.spec(DEMO_CONFIG)


def sample_input(rows: int = 1, seed: int = SEED) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, DEMO_IN, generator=g)


def write_all(out: Path) -> dict[str, Path]:
    """Writes every file; returns them by role."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    module, spec = build_demo()
    x = sample_input(2)

    files["torchscript"] = out / "demo.torchscript.pt"
    torch.jit.save(torch.jit.script(module), str(files["torchscript"]))

    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(module, (x,), dynamic_shapes=({0: batch},))
    files["torch_export"] = out / "demo.pt2"
    torch.export.save(program, str(files["torch_export"]))

    files["safetensors"] = out / "demo.safetensors"
    safetensors_io.save(module.state_dict(), files["safetensors"], {"architecture": "mlp"})
    files["arch"] = out / "demo.arch.json"
    files["arch"].write_text(json.dumps({"architecture": "mlp", "config": DEMO_CONFIG}) + "\n")
    files["metadata"] = out / "demo.metadata.json"
    files["metadata"].write_text(spec.to_json() + "\n")

    one = sample_input(1)
    files["sample_npy"] = out / "sample_input.npy"
    np.save(files["sample_npy"], one.numpy(), allow_pickle=False)
    files["sample_json"] = out / "sample_input.json"
    files["sample_json"].write_text(json.dumps({"input": one.tolist()}) + "\n")
    files["expected_json"] = out / "sample_output.json"
    with torch.inference_mode():
        files["expected_json"].write_text(json.dumps({"output": module(one).tolist()}) + "\n")

    noop_arch = architectures.get("noop")
    noop, noop_spec = noop_arch.build(NOOP_CONFIG), noop_arch.spec(NOOP_CONFIG)
    files["noop_safetensors"] = out / "noop.safetensors"
    safetensors_io.save({}, files["noop_safetensors"], {"architecture": "noop"})
    files["noop_torchscript"] = out / "noop.torchscript.pt"
    torch.jit.save(torch.jit.script(noop), str(files["noop_torchscript"]))
    files["noop_arch"] = out / "noop.arch.json"
    files["noop_arch"].write_text(
        json.dumps({"architecture": "noop", "config": NOOP_CONFIG}) + "\n"
    )
    files["noop_metadata"] = out / "noop.metadata.json"
    files["noop_metadata"].write_text(noop_spec.to_json() + "\n")
    return files


def large_input(rows: int = 1, seed: int = SEED) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, LARGE_IN, generator=g)


def write_large(out: Path) -> Path:
    """Writes ``demo-large.torchscript.pt`` (see the module docstring); returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    arch = architectures.get("mlp")
    module = arch.build(LARGE_CONFIG).eval()
    path = out / "demo-large.torchscript.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    (out / "demo-large.metadata.json").write_text(arch.spec(LARGE_CONFIG).to_json() + "\n")
    return path


GPU_WIDTH = 8192
GPU_DEPTH = 128


class SharedLayerMLP(torch.nn.Module):
    """in -> width, then one width x width layer applied ``depth`` times (ReLU), -> out."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.depth = depth
        self.first = torch.nn.Linear(LARGE_IN, width)
        self.shared = torch.nn.Linear(width, width)
        self.last = torch.nn.Linear(width, LARGE_OUT)
        # He initialisation keeps activations at a steady scale through the repeated layer
        # (the default would shrink them towards denormals, which are slow on CPUs).
        torch.nn.init.normal_(self.shared.weight, std=(2.0 / width) ** 0.5)
        torch.nn.init.zeros_(self.shared.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.first(x))
        for _ in range(self.depth):
            x = torch.relu(self.shared(x))
        out: torch.Tensor = self.last(x)
        return out


def write_gpu(out: Path, depth: int = GPU_DEPTH, width: int = GPU_WIDTH) -> Path:
    """Writes ``demo-gpu.torchscript.pt`` (see the module docstring); returns its path.

    Same inputs and outputs as ``demo-large`` (``large_input`` makes its rows).
    """
    if depth < 1 or width < 1:
        raise ValueError(f"demo-gpu needs depth and width >= 1 (got {depth}, {width})")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    module = SharedLayerMLP(width, depth).eval()
    path = out / "demo-gpu.torchscript.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    spec = architectures.get("mlp").spec({"in": LARGE_IN, "hidden": [width], "out": LARGE_OUT})
    (out / "demo-gpu.metadata.json").write_text(
        ModelSpec(spec.inputs, spec.outputs).to_json() + "\n"
    )
    return path


def write_busy(out: Path, stem: str, config: dict[str, float]) -> Path:
    """Writes ``<stem>.safetensors`` of the ``busy`` architecture (no weights: it holds the
    engine ``ms_per_batch + rows * ms_per_row`` without using a CPU) and its metadata, for
    benchmarks and tests that need a model of a known cost; returns the weights' path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.safetensors"
    safetensors_io.save({}, path, {"architecture": "busy"})
    spec = architectures.get("busy").spec(config)
    (out / f"{stem}.metadata.json").write_text(spec.to_json() + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", required=True, help="directory to write the model files into")
    p.add_argument("--large", action="store_true", help="also write demo-large (168 MB)")
    p.add_argument("--gpu", action="store_true", help="also write demo-gpu (305 MB)")
    p.add_argument("--gpu-depth", type=int, default=GPU_DEPTH, help="demo-gpu's layer repeats")
    args = p.parse_args(argv)
    files = write_all(Path(args.out))
    if args.large:
        files["large_torchscript"] = write_large(Path(args.out))
    if args.gpu:
        files["gpu_torchscript"] = write_gpu(Path(args.out), args.gpu_depth)
    for role, path in files.items():
        print(f"{role:18} {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Named architectures that safetensors weights can be paired with.

A safetensors file holds only tensors; the code that uses them must come from us, never from
the file. Each entry here builds an ``nn.Module`` from a small JSON config and states the
metadata (ports) it implies. Configs are validated strictly: a typo is an error, not a
silently different model.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from p2pagent.errors import InvalidArgument
from p2pagent.inference.spec import DYNAMIC, ModelSpec, PortSpec


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[[Mapping[str, Any]], nn.Module]
    spec: Callable[[Mapping[str, Any]], ModelSpec]
    doc: str


def _int(cfg: Mapping[str, Any], key: str, arch: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgument(f"architecture {arch!r}: {key!r} must be an integer >= 1")
    return value


def _keys(cfg: Mapping[str, Any], allowed: set[str], arch: str) -> None:
    unknown = set(cfg) - allowed
    if unknown:
        raise InvalidArgument(
            f"architecture {arch!r}: unknown config keys {sorted(unknown)}; "
            f"allowed: {sorted(allowed)}"
        )


# ---- mlp ---------------------------------------------------------------------------------


def _mlp_dims(cfg: Mapping[str, Any]) -> list[int]:
    _keys(cfg, {"in", "hidden", "out"}, "mlp")
    hidden = cfg.get("hidden", [])
    if not isinstance(hidden, list):
        raise InvalidArgument("architecture 'mlp': 'hidden' must be a list of layer widths")
    for h in hidden:
        if not isinstance(h, int) or isinstance(h, bool) or h < 1:
            raise InvalidArgument("architecture 'mlp': 'hidden' widths must be integers >= 1")
    return [_int(cfg, "in", "mlp"), *hidden, _int(cfg, "out", "mlp")]


class MLP(nn.Module):
    """Linear layers with ReLU between them. Parameter names: ``layers.<i>.weight|bias``."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = torch.relu(x)
        return x


def _mlp_build(cfg: Mapping[str, Any]) -> nn.Module:
    return MLP(_mlp_dims(cfg))


def _mlp_spec(cfg: Mapping[str, Any]) -> ModelSpec:
    dims = _mlp_dims(cfg)
    return ModelSpec(
        (PortSpec("input", "float32", (DYNAMIC, dims[0])),),
        (PortSpec("output", "float32", (DYNAMIC, dims[-1])),),
        "mlp",
        dict(cfg),
    )


# ---- noop --------------------------------------------------------------------------------


class Identity(nn.Module):
    """Returns its input: measures everything around the model, nothing of the model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _noop_build(cfg: Mapping[str, Any]) -> nn.Module:
    _noop_spec(cfg)
    return Identity()


def _noop_spec(cfg: Mapping[str, Any]) -> ModelSpec:
    _keys(cfg, {"features"}, "noop")
    features = _int(cfg, "features", "noop", 1)
    return ModelSpec(
        (PortSpec("input", "float32", (DYNAMIC, features)),),
        (PortSpec("output", "float32", (DYNAMIC, features)),),
        "noop",
        dict(cfg),
    )


# ---- busy ------------------------------------------------------------------------------------


class Busy(nn.Module):
    """Returns its input after holding the worker for ``ms_per_batch`` plus ``ms_per_row`` per
    input row, without using a CPU: a stand-in for a device kernel of known cost, so that
    scheduling benchmarks on a small machine can run more nodes than it has cores, and
    batching benchmarks can mimic a GPU's fixed cost per batch (sleep releases the GIL)."""

    def __init__(self, ms_per_row: float, ms_per_batch: float = 0.0) -> None:
        super().__init__()
        self.ms_per_row = ms_per_row
        self.ms_per_batch = ms_per_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep((self.ms_per_batch + self.ms_per_row * x.shape[0]) / 1000.0)
        return x


def _ms(cfg: Mapping[str, Any], key: str, default: float) -> float:
    ms = cfg.get(key, default)
    if not isinstance(ms, int | float) or isinstance(ms, bool) or not 0 <= ms <= 60_000:
        raise InvalidArgument(f"architecture 'busy': {key!r} must be a number in [0, 60000]")
    return float(ms)


def _busy_cfg(cfg: Mapping[str, Any]) -> tuple[int, float, float]:
    _keys(cfg, {"features", "ms_per_row", "ms_per_batch"}, "busy")
    features = _int(cfg, "features", "busy", 1)
    return features, _ms(cfg, "ms_per_row", 1.0), _ms(cfg, "ms_per_batch", 0.0)


def _busy_build(cfg: Mapping[str, Any]) -> nn.Module:
    _, per_row, per_batch = _busy_cfg(cfg)
    return Busy(per_row, per_batch)


def _busy_spec(cfg: Mapping[str, Any]) -> ModelSpec:
    features, _, _ = _busy_cfg(cfg)
    return ModelSpec(
        (PortSpec("input", "float32", (DYNAMIC, features)),),
        (PortSpec("output", "float32", (DYNAMIC, features)),),
        "busy",
        dict(cfg),
    )


REGISTRY: dict[str, Architecture] = {
    "mlp": Architecture(
        "mlp", _mlp_build, _mlp_spec, 'MLP, config {"in": 256, "hidden": [512, 512], "out": 10}'
    ),
    "noop": Architecture("noop", _noop_build, _noop_spec, 'identity, config {"features": 256}'),
    "busy": Architecture(
        "busy",
        _busy_build,
        _busy_spec,
        "identity after ms_per_batch + ms_per_row per row without CPU, config "
        '{"features": 4, "ms_per_row": 20, "ms_per_batch": 0}',
    ),
}


def get(name: str) -> Architecture:
    arch = REGISTRY.get(name)
    if arch is None:
        raise InvalidArgument(
            f"unknown architecture {name!r}; this node knows {', '.join(sorted(REGISTRY))}"
        )
    return arch


def build_with_weights(
    name: str, cfg: Mapping[str, Any], weights: Mapping[str, torch.Tensor]
) -> nn.Module:
    """Builds the architecture and loads ``weights`` into it, requiring an exact match."""
    module = get(name).build(cfg)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise InvalidArgument(
            f"weights do not fit architecture {name!r} with config {dict(cfg)}: "
            f"missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for key, want in expected.items():
        got = weights[key]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise InvalidArgument(
                f"weights do not fit architecture {name!r}: {key!r} expects "
                f"{want.dtype} {list(want.shape)}, the file has {got.dtype} {list(got.shape)}"
            )
    module.load_state_dict(dict(weights), strict=True)
    return module.eval()

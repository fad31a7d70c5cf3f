"""What loading a model folder will allocate, bounded before ``transformers`` allocates it.

The publish check (a child process with a memory limit, models/publish_check.py) runs only on
the node a folder was pushed to; every other node loads the folder it pulled in the daemon.
The folder's config.json is the publisher's, and ``from_pretrained`` builds whatever it
describes, then fills in what the weights do not hold with fresh (allocated, randomly
initialised) tensors: a layer count or a position table far beyond the weights in the file
costs gigabytes from a few bytes of JSON. So, before ``from_pretrained``, on every node:

1. The numbers that make Python objects rather than tensors (layer and expert counts) and
   every integer of the config are bounded, so that building the skeleton is itself cheap.
2. The model is built on the meta device (shapes only, no memory) and its parameters and
   buffers counted: what it will allocate must be within what the folder's safetensors files
   hold (as float32, the dtype it loads in) plus a margin, for a head a base checkpoint lacks
   (a classifier's) and for buffers (position ids).

Where model isolation is on, folders load in the model worker (worker_main), which runs
these checks on the files the daemon hands it, under the worker's own memory limit
(``inference.worker_memory_bytes``): a model larger than what that limit leaves is refused
there by ``check_fits`` before anything is allocated.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from p2pagent.errors import InvalidArgument
from p2pagent.inference.safetensors_io import read_header

#: Most layers (or experts) a config may ask for: the largest public models have ~128.
MAX_LAYERS = 1024
#: Largest integer a config may hold anywhere (vocabularies and position tables included).
MAX_CONFIG_INT = 1 << 31
#: What the model may allocate beyond the float32 size of the folder's weights: a fraction of
#: them, and at least this many bytes (a fresh classifier head, position-id buffers).
MARGIN_FRACTION = 0.10
MARGIN_BYTES = 64 << 20
#: Keys whose values make one module (Python objects) each, not one tensor.
_OBJECT_COUNTS = frozenset(
    {
        "num_hidden_layers", "num_layers", "n_layer", "n_layers", "num_decoder_layers",
        "encoder_layers", "decoder_layers", "num_experts", "num_local_experts",
        "n_routed_experts",
    }
)  # fmt: skip


def check_config_numbers(config: Mapping[str, Any]) -> None:
    """Step 1: InvalidArgument naming the first number out of bounds."""
    for key, value in _numbers(config, ""):
        name = key.rsplit(".", 1)[-1]
        if name in _OBJECT_COUNTS and value > MAX_LAYERS:
            raise InvalidArgument(
                f"the folder's config.json sets {key} = {value}: at most {MAX_LAYERS} are "
                "served (each is a module the node would build)"
            )
        if abs(value) > MAX_CONFIG_INT:
            raise InvalidArgument(
                f"the folder's config.json sets {key} = {value}, past {MAX_CONFIG_INT}: no "
                "model of that size is served"
            )


def weight_elements(folder: Path) -> int:
    """Elements in the tensors of the folder's safetensors files (headers only)."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            header, _ = read_header(memoryview(m), f"the folder's {path.name}")
        total += header_elements(header, path.name)
    return total


def header_elements(header: Mapping[str, Any], name: str) -> int:
    """Elements in the tensors one safetensors header declares."""
    total = 0
    for key, entry in header.items():
        if key == "__metadata__" or not isinstance(entry, dict):
            continue
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise InvalidArgument(f"the folder's {name}: tensor {key[:64]!r} has no shape")
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def skeleton_bytes(cls: Any, config: Mapping[str, Any]) -> int:
    """Step 2's count: bytes of the parameters and buffers ``cls`` builds from the folder's
    config (its config.json, parsed), as float32, built on the meta device (nothing
    allocated)."""
    import torch

    try:
        # What from_pretrained does with a local folder's config.json.
        built = cls.config_class.from_dict(dict(config))
        with torch.device("meta"):
            model = cls._from_config(built, dtype=torch.float32)
    except InvalidArgument:
        raise
    except Exception as e:  # transformers raises many kinds for a config it cannot build
        raise InvalidArgument(f"the folder's config.json does not build a model: {e}") from None
    seen: set[int] = set()
    total = 0
    for t in (*model.parameters(), *model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * 4
    return total


def check_allocation(cls: Any, folder: Path, config: Mapping[str, Any]) -> None:
    """Both steps on a folder on disk; InvalidArgument saying what the folder asks for
    against what it holds."""
    check_held(cls, config, weight_elements(folder))


def check_held(cls: Any, config: Mapping[str, Any], held_elements: int) -> int:
    """Both steps, given the elements the folder's safetensors files hold; returns the
    model's size in bytes (as float32)."""
    check_config_numbers(config)
    wanted = skeleton_bytes(cls, config)
    check_wanted(wanted, held_elements)
    return wanted


def check_wanted(wanted: int, held_elements: int) -> None:
    """Step 2's comparison: ``wanted`` bytes (``skeleton_bytes``) against the elements the
    folder's weights hold."""
    held = held_elements * 4
    allowed = held + max(MARGIN_BYTES, int(held * MARGIN_FRACTION))
    if wanted > allowed:
        raise InvalidArgument(
            f"the folder's config.json describes a model of {wanted / 2**20:.0f} MiB but its "
            f"safetensors weights hold {held / 2**20:.0f} MiB: the rest would be allocated "
            "empty. The config does not match the weights; export the folder again"
        )


def _numbers(doc: Any, prefix: str, depth: int = 0) -> Iterator[tuple[str, int]]:
    """(dotted key, value) for every integer in a JSON document, nested ones included."""
    if depth > 8:
        return
    if isinstance(doc, Mapping):
        for k, v in doc.items():
            yield from _numbers(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:4096]):
            yield from _numbers(v, f"{prefix}[{i}]", depth + 1)
    elif isinstance(doc, int) and not isinstance(doc, bool):
        yield prefix, doc

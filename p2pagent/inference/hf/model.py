"""Building a model folder's model with ``transformers`` (offline, safetensors only,
``trust_remote_code=False``) from its parsed config and weights, and the heads that turn its
hidden states into a task's outputs: sentence-transformers pooling and normalisation, or a
classifier's logits. ``build`` is the one way: the model worker calls it with what it read
from the pack (``worker_load``), the daemon (isolation off) with a folder's files.

Imported only in a process that loads a folder (it imports torch and transformers).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from torch import nn

from p2pagent.errors import InvalidArgument
from p2pagent.inference.hf import budget
from p2pagent.inference.hf.folder import EMBEDDING, known_architectures


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """sentence-transformers' Pooling over the tokens the mask keeps."""
    if mode == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(m == 0, -1e9).max(dim=1).values
    total = (hidden * m).sum(dim=1)
    count = m.sum(dim=1).clamp(min=1e-9)
    return total / (count.sqrt() if mode == "mean_sqrt_len" else count)


class FolderModel(nn.Module):
    """(input_ids, attention_mask) -> the task's outputs by port name."""

    def __init__(self, model: nn.Module, arch_config: Mapping[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.task = str(arch_config["task"])
        self.pooling = str(arch_config.get("pooling", "mean"))
        self.normalize = bool(arch_config.get("normalize", False))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.task == EMBEDDING:
            emb = pool(out[0], attention_mask, self.pooling)
            if self.normalize:
                emb = nn.functional.normalize(emb, p=2, dim=1)
            return {"embedding": emb.float()}
        return {"logits": out.logits.float()}


def architecture_class(architecture: str) -> Any:
    """The ``transformers`` class of a folder's architecture; InvalidArgument if unknown."""
    if architecture not in known_architectures():
        raise InvalidArgument(f"architecture {architecture!r} is not known to transformers")
    import transformers
    from transformers.utils import logging as hf_logging

    # A load's report and progress bars are for notebooks; a node logs its own line.
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    cls = getattr(transformers, architecture, None)
    if cls is None:
        raise InvalidArgument(f"transformers has no class {architecture!r}")
    return cls


def build(
    cls: Any,
    config: Mapping[str, Any],
    weights: dict[str, torch.Tensor],
    arch_config: Mapping[str, Any],
) -> FolderModel:
    """The model from its parsed config.json and its safetensors tensors, on the CPU, in eval
    mode: what ``from_pretrained`` does with a folder, but from what was already read (the
    model worker reads the files from descriptors; it cannot open the node's data folder).
    The caller has run ``budget.check_held`` on the config."""
    try:
        model = cls.from_pretrained(
            None,
            config=cls.config_class.from_dict(dict(config)),
            state_dict=weights,
            trust_remote_code=False,
            dtype=torch.float32,
        )
    except Exception as e:  # transformers raises many kinds for weights it cannot load
        if _out_of_memory(e):
            raise
        raise InvalidArgument(f"the folder does not load with transformers: {e}") from None
    return FolderModel(model, arch_config).eval()


def _out_of_memory(e: BaseException) -> bool:
    """An allocation that failed (the model worker's memory limit), not a bad folder."""
    return isinstance(e, MemoryError | torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e)
    )


def load_folder(folder: Path, architecture: str, arch_config: Mapping[str, Any]) -> FolderModel:
    """The folder's model on the CPU, in eval mode; InvalidArgument when it does not load.
    In the daemon: only where ``inference.isolate_code_models`` is off."""
    from p2pagent.inference import safetensors_io

    cls = architecture_class(architecture)
    config = _config(folder)
    # On every node, not only where it was pushed: the config must not make this process
    # allocate more than the weights the folder holds (see budget.py).
    budget.check_allocation(cls, folder, config)
    weights: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        weights.update(safetensors_io.load(path)[0])
    return build(cls, config, weights, arch_config)


def _config(folder: Path) -> dict[str, Any]:
    try:
        doc = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InvalidArgument(f"the folder's config.json cannot be read: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("the folder's config.json must be a JSON object")
    return doc

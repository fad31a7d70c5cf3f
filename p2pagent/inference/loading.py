"""Loading a model file onto a device: the torch half of ``p2pagent.inference.formats``.

Imported only when a node loads its first model (torch costs ~200 MB of RSS); see formats
for the formats. Nothing a model file holds is unpickled: every archive passes
``archive_check.check_archive`` before torch opens it, and importing this module forces
``torch.load`` to ``weights_only=True`` in the whole process (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``,
which overrides even torch's own ``weights_only=False`` fallbacks inside ``torch.export.load``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import IO

# torch reads both at every torch.load call, so this holds whenever torch was imported.
os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"

import torch
from torch import nn

from p2pagent.errors import InvalidArgument
from p2pagent.inference import architectures, safetensors_io
from p2pagent.inference.archive_check import check_archive
from p2pagent.inference.formats import LoadedModel, ModelFormat, detect_format
from p2pagent.inference.spec import ModelSpec


def load_model(
    name: str,
    path: Path,
    spec: ModelSpec,
    device: torch.device | str,
    fmt: ModelFormat | None = None,
    source: IO[bytes] | None = None,
    mapped: bool = False,
) -> LoadedModel:
    """Loads and validates a model file; blocking, so call it off the event loop.

    ``source``: the file's bytes, already read (with ``fmt`` given), for a process confined
    before it loads a code-bearing model and so unable to open ``path`` itself. ``mapped``:
    safetensors weights read through a memory map (``safetensors_io.load``; the publish
    check's child only)."""
    device = torch.device(device)
    path = Path(path)
    if (fmt or detect_format(path)) is ModelFormat.HF_FOLDER:
        return load_folder_pack(name, path, spec, device)
    if source is None:
        detected = detect_format(path)
    elif fmt is None:
        raise InvalidArgument("loading a model from its bytes needs its format")
    else:
        detected = fmt
    if fmt is not None and fmt is not detected:
        raise InvalidArgument(
            f"model file {path} is not a valid {fmt.value} file (it looks like {detected.value})"
        )
    check_archive(path if source is None else source, detected)
    if source is not None:
        source.seek(0)
    where: str | IO[bytes] = str(path) if source is None else source
    module: nn.Module
    if detected is ModelFormat.TORCHSCRIPT:
        try:
            module = torch.jit.load(where, map_location=device)  # type: ignore[no-untyped-call]
        except Exception as e:
            raise InvalidArgument(
                f"model file {path} is not a valid torchscript archive: {e}"
            ) from None
    elif detected is ModelFormat.TORCH_EXPORT:
        try:
            with warnings.catch_warnings():
                # torch 2.11 warns that it wraps the archive's read-only bytes in tensors; the
                # weights are copied to the device below and never written through.
                warnings.filterwarnings("ignore", "The given buffer is not writable")
                module = torch.export.load(where).module()
        except Exception as e:
            raise InvalidArgument(
                f"model file {path} is not a valid torch.export program: {e}"
            ) from None
        # Exported programs are already in inference form (and refuse .eval()).
        module = module.to(device)
    else:
        if not spec.architecture:
            raise InvalidArgument(
                f"model {name!r}: safetensors weights need an architecture in the metadata "
                f"(one of {', '.join(sorted(architectures.REGISTRY))})"
            )
        weights, _ = safetensors_io.load(path, mapped=mapped)
        module = architectures.build_with_weights(spec.architecture, spec.arch_config, weights)
        module = module.to(device).eval()
    return LoadedModel(name, spec, detected, module, device, module_nbytes(module))


def load_folder_pack(name: str, path: Path, spec: ModelSpec, device: torch.device) -> LoadedModel:
    """A published Hugging Face folder, loaded here with transformers, with its tokenizer
    (only where ``inference.isolate_code_models`` is off: else in the model worker)."""
    from p2pagent.inference.hf import model as hf_model
    from p2pagent.inference.hf.text import ServedFolder

    served = ServedFolder.of_pack(path, spec)
    module = hf_model.load_folder(served.folder, spec.architecture, spec.arch_config).to(device)
    return LoadedModel(
        name, spec, ModelFormat.HF_FOLDER, module, device, module_nbytes(module),
        served.ragged, served.text,
    )  # fmt: skip


def module_nbytes(module: nn.Module) -> int:
    """Bytes held by parameters and buffers (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for t in (*module.parameters(), *module.buffers()):
        key = t.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total

"""Model file formats: the one ``ModelFormat`` (uploads, manifests, the CLI and the loader all
use it), telling them apart by content, and loading onto a device.

Three formats, by the name the wire, manifests and ``--format`` use:

- ``torchscript``: ``torch.jit.save`` archives (a zip with ``code/`` and ``constants.pkl``).
- ``export``: ``torch.export.save`` programs, ``.pt2`` (a zip with ``archive_format``);
  ``torch_export`` is accepted for it too.
- ``safetensors``: raw weights plus an architecture from our registry, named in the spec.

Two sniffers, one per moment: ``check_header`` looks at a file's first ``FORMAT_HEAD_BYTES``
(as an upload starts, before the rest arrives), ``detect_format`` at the whole file (its zip
directory) once it is complete.

Trust. TorchScript and torch.export archives embed code (TorchScript / FX graphs, run by
torch's interpreters) and may embed pickles. No pickle is ever unpickled: ``archive_check``
refuses an archive whose loading would unpickle anything but tensors and TorchScript types
(at publish, and again before every load), and ``loading`` forces ``torch.load`` to
``weights_only=True`` process-wide. Safetensors goes through our own JSON-and-bytes parser.

This module does not import torch (the models layer and the CLI use it to tell formats
apart); loading lives in ``p2pagent.inference.loading``, imported on the first load.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pagent.errors import InvalidArgument
from p2pagent.inference.spec import ModelSpec

if TYPE_CHECKING:
    import torch

    from p2pagent.inference.hf.text import TextSide
    from p2pagent.inference.ragged import RaggedInputs


class ModelFormat(Enum):
    TORCHSCRIPT = "torchscript"
    TORCH_EXPORT = "export"
    SAFETENSORS = "safetensors"
    #: A Hugging Face model folder, packed as one file (``inference.hf.pack``).
    HF_FOLDER = "hf_folder"

    @property
    def suffix(self) -> str:
        """File name suffix an assembled file gets."""
        return _SUFFIXES[self]

    @staticmethod
    def parse(value: str | ModelFormat) -> ModelFormat:
        if isinstance(value, ModelFormat):
            return value
        try:
            return ModelFormat(_ALIASES.get(value, value))
        except ValueError:
            raise InvalidArgument(
                f"unknown model format {value!r}: use one of {', '.join(FORMAT_NAMES)}"
            ) from None


_SUFFIXES = {
    ModelFormat.TORCHSCRIPT: ".pt",
    ModelFormat.TORCH_EXPORT: ".pt2",
    ModelFormat.SAFETENSORS: ".safetensors",
    ModelFormat.HF_FOLDER: ".hfpack",
}
_ALIASES = {"torch_export": "export"}
#: The names ``--format`` and the upload header take.
FORMAT_NAMES = tuple(f.value for f in ModelFormat)
#: Bytes of a file's start that ``check_header`` reads.
FORMAT_HEAD_BYTES = 16
_ZIP_MAGIC = b"PK\x03\x04"
#: First bytes of a folder pack (``inference.hf.pack.MAGIC``; not imported: kept light).
_PACK_MAGIC = b"P2PHFPK1"


def check_header(fmt: ModelFormat, head: bytes) -> None:
    """Refuses a file whose first bytes cannot be the declared format (INVALID_ARGUMENT)."""
    if fmt is ModelFormat.HF_FOLDER:
        if not head.startswith(_PACK_MAGIC):
            raise InvalidArgument(
                "the upload is not a model folder pack: push the folder itself "
                "(p2pagentctl models push DIR)"
            )
    elif fmt in (ModelFormat.TORCHSCRIPT, ModelFormat.TORCH_EXPORT):
        if not head.startswith(_ZIP_MAGIC):
            raise InvalidArgument(
                f"the model file is not a {fmt.value} model: {fmt.value} files are zip "
                "archives (torch.jit.save / torch.export.save); check --format"
            )
    elif not _safetensors_head(head):
        raise InvalidArgument(
            "the model file is not a safetensors file (no JSON header after the 8-byte "
            "length); check --format"
        )


def _safetensors_head(head: bytes) -> bool:
    return len(head) >= 9 and head[8:9] == b"{"


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model resident on a device, ready for forward passes in the worker thread."""

    name: str
    spec: ModelSpec
    format: ModelFormat
    #: Called with the inputs in port order; returns a tensor, a sequence or a name->tensor map.
    fn: Callable[..., Any]
    device: torch.device
    #: Bytes of parameters and buffers (what the cache budget counts).
    nbytes: int
    #: Set for a model whose inputs are padded per batch (token ids of a folder).
    ragged: RaggedInputs | None = None
    #: The folder's text side (tokenizer, task, labels) for Embed and Classify.
    text: TextSide | None = None


def detect_format(path: Path) -> ModelFormat:
    """Tells the format from the file's content, not its name; refuses anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise InvalidArgument(f"cannot read model file {path}: {e}") from None
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise InvalidArgument(f"model file {path} is a damaged zip archive: {e}") from None
        if any(n.endswith("/archive_format") for n in names):
            return ModelFormat.TORCH_EXPORT
        if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
            return ModelFormat.TORCHSCRIPT
        raise InvalidArgument(
            f"model file {path} is a zip archive but neither a torchscript archive "
            "nor a torch.export program"
        )
    if head.startswith(_PACK_MAGIC):
        return ModelFormat.HF_FOLDER
    if _safetensors_head(head):
        return ModelFormat.SAFETENSORS
    raise InvalidArgument(
        f"model file {path} is not a model: expected a torchscript archive, a torch.export "
        ".pt2 program or a safetensors file"
    )


def load_model(
    name: str,
    path: Path,
    spec: ModelSpec,
    device: torch.device | str,
    fmt: ModelFormat | None = None,
) -> LoadedModel:
    """Loads and validates a model file (imports torch); blocking, so call it off the event
    loop."""
    from p2pagent.inference import loading

    return loading.load_model(name, path, spec, device, fmt)

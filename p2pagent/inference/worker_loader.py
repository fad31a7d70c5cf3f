"""The model cache's loader when models are isolated: which formats load in the model worker.

TorchScript and torch.export archives carry code: they are checked without running anything
(``archive_check``) and handed to the worker (``worker.ModelWorker``). safetensors weights run
through the in-repo architectures here, in the daemon: no code comes from the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from p2pagent.errors import InvalidArgument
from p2pagent.inference.archive_check import check_archive
from p2pagent.inference.formats import LoadedModel, ModelFormat, detect_format, load_model
from p2pagent.inference.spec import ModelSpec
from p2pagent.inference.worker import ModelWorker

if TYPE_CHECKING:
    import torch

    from p2pagent.inference.cache import Loader

#: Formats that carry code: loaded and run only in the worker.
CODE_FORMATS = frozenset({ModelFormat.TORCHSCRIPT, ModelFormat.TORCH_EXPORT})


def isolating_loader(worker: ModelWorker) -> Loader:
    """The model cache's loader: code-bearing formats in the worker, the rest here (weights
    through the in-repo architectures, which run no code from the file)."""

    def load(
        name: str, path: Path, spec: ModelSpec, device: torch.device | str,
        fmt: ModelFormat | None,
    ) -> LoadedModel:  # fmt: skip
        detected = detect_format(Path(path))
        if fmt is not None and fmt is not detected:
            raise InvalidArgument(
                f"model file {path} is not a valid {fmt.value} file "
                f"(it looks like {detected.value})"
            )
        if detected in CODE_FORMATS:
            # Read without running it (no pickle, only tensors and TorchScript types) before
            # the worker is handed the file: the same check as every in-process load.
            check_archive(Path(path), detected)
            return worker.load(name, Path(path), spec, device, detected)
        return load_model(name, Path(path), spec, device, detected)

    return load

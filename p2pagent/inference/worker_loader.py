"""The model cache's loader when models are isolated: which formats load in the model worker.

TorchScript and torch.export archives carry code: they are checked without running anything
(``archive_check``) and handed to the worker (``worker.ModelWorker``). Hugging Face folders
run in the worker too, under its memory limit (``inference.worker_memory_bytes``): the daemon
unpacks and verifies the folder, keeps its tokenizer (token ids cross to the worker, padded
per batch) and hands the worker the pack with where its config and weights lie in it
(``hf.worker_load``). safetensors weights of the in-repo architectures run here, in the
daemon: neither code nor a publisher's model description comes from the file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pagent.errors import InvalidArgument, P2PAgentError
from p2pagent.inference.archive_check import check_archive
from p2pagent.inference.formats import LoadedModel, ModelFormat, detect_format, load_model
from p2pagent.inference.hf.worker_load import HEAD_KEYS, FileRange, FolderLoad, model_files
from p2pagent.inference.spec import ModelSpec
from p2pagent.inference.worker import ModelWorker

if TYPE_CHECKING:
    import torch

    from p2pagent.inference.cache import Loader

log = logging.getLogger(__name__)

#: Formats that carry code: loaded and run only in the worker.
CODE_FORMATS = frozenset({ModelFormat.TORCHSCRIPT, ModelFormat.TORCH_EXPORT})


def warming(worker: ModelWorker) -> Callable[[ModelFormat, ModelSpec], None]:
    """The models driver's hook for a version that became loadable here (published or
    pulled): a format the worker runs starts the worker now rather than at the first request,
    and a folder has it import its architecture's code, once per worker process and
    architecture. Bounded: one worker for every model, and no model is loaded before it is
    asked for (that would take memory from the models in use)."""
    done: set[tuple[int | None, str]] = set()

    def warm(fmt: ModelFormat, spec: ModelSpec) -> None:
        if fmt is not ModelFormat.HF_FOLDER and fmt not in CODE_FORMATS:
            return  # runs in the daemon
        arch = spec.architecture if fmt is ModelFormat.HF_FOLDER else ""
        try:
            if (worker.pid, arch) in done:
                return
            started = time.monotonic()
            future = worker.warm(arch)
        except P2PAgentError as e:  # the first request starts it again and says why
            log.info("model worker not started ahead of the first request: %s", e)
            return
        if worker.pid is not None:  # else it died at once: the next version tries again
            done.add((worker.pid, arch))
        if future is not None:
            future.add_done_callback(lambda f: _warmed(f, arch, started))

    return warm


def _warmed(future: asyncio.Future[dict[str, Any]], arch: str, started: float) -> None:
    if future.cancelled():
        return
    if (e := future.exception()) is not None:  # the load of such a model would say the same
        log.info("model worker could not prepare for %s models: %s", arch, e)
        return
    took = time.monotonic() - started
    log.info("model worker ready for %s models (%.1f s after it was asked)", arch, took)


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
        if detected is ModelFormat.HF_FOLDER:
            return _load_folder(worker, name, Path(path), spec, device)
        if detected in CODE_FORMATS:
            # Read without running it (no pickle, only tensors and TorchScript types) before
            # the worker is handed the file: the same check as every in-process load.
            check_archive(Path(path), detected)
            return worker.load(name, Path(path), spec, device, detected)
        return load_model(name, Path(path), spec, device, detected)

    return load


def _load_folder(
    worker: ModelWorker, name: str, path: Path, spec: ModelSpec, device: torch.device | str
) -> LoadedModel:
    """A published folder: tokenizer and padding here, the model in the worker."""
    from p2pagent.inference.hf import pack
    from p2pagent.inference.hf.text import ServedFolder

    served = ServedFolder.of_pack(path, spec)  # unpacked and every file verified
    with path.open("rb") as f:
        files, offset = pack.read_index(f)
    ranges = []
    for entry in files:  # the pack holds the files one after another, in index order
        ranges.append(FileRange(entry.path, offset, entry.size))
        offset += entry.size
    head = {k: spec.arch_config[k] for k in HEAD_KEYS if k in spec.arch_config}
    folder = FolderLoad(spec.architecture, head, tuple(model_files(ranges)))
    loaded = worker.load(name, path, spec, device, ModelFormat.HF_FOLDER, folder)
    return dataclasses.replace(loaded, ragged=served.ragged, text=served.text)

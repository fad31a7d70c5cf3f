"""A model loaded in the model worker, as the engine sees it: the ``fn`` of its ``LoadedModel``.

The engine hands such a model's batches to ``RemoteModel.submit`` (on the event loop; the
answer completes them there) or awaits ``RemoteModel.run``; both go through the node's one
``worker.ModelWorker``, which owns the process, its shared memory and its failures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pagent.errors import Internal
from p2pagent.inference.formats import LoadedModel, ModelFormat
from p2pagent.inference.hf.worker_load import FolderLoad

if TYPE_CHECKING:
    import torch

    from p2pagent.inference.spec import InputTensor
    from p2pagent.inference.worker import ModelWorker


_outputs: Any = None  # runner's, imported with torch on the first batch
split: Any = None


class RemoteModel:
    """A model loaded in the worker: the ``fn`` of its ``LoadedModel``."""

    def __init__(
        self, worker: ModelWorker, key: int, name: str, path: Path, fmt: ModelFormat,
        device: str, output_names: list[str], folder: FolderLoad | None = None,
    ) -> None:  # fmt: skip
        self.worker = worker
        self.key = key
        self.name = name
        self.path = path
        self.format = fmt
        self.device = device
        self.output_names = output_names
        self.folder = folder

    async def run(
        self, model: LoadedModel, parts: Sequence[Sequence[InputTensor]]
    ) -> tuple[list[list[torch.Tensor]], float]:
        """One batch in the worker: each request's outputs and the seconds it took."""
        from p2pagent.inference.runner import _outputs, split

        rows = sum(int(p[0].shape[0]) for p in parts) if model.spec.batchable else 1
        outputs, seconds = await self.worker.run(self, parts, rows, model.spec.batchable)
        return split(model, _outputs(model, outputs, rows), parts), seconds

    def submit(
        self,
        model: LoadedModel,
        parts: Sequence[Sequence[InputTensor]],
        done: Callable[[list[list[torch.Tensor]] | None, BaseException | None], None],
    ) -> None:
        """Hands one batch to the worker (``ModelWorker.submit``); ``done`` gets each
        request's outputs or the error, later, on the loop."""
        global _outputs, split
        if split is None:  # torch's side of the engine, imported on the first batch
            from p2pagent.inference.runner import _outputs, split

        batchable = model.spec.batchable
        rows = sum(int(p[0].shape[0]) for p in parts) if batchable else 1

        def finished(outputs: list[torch.Tensor] | None, error: BaseException | None) -> None:
            if outputs is None:
                done(None, error or Internal("the model worker gave no outputs"))
                return
            try:
                outs = split(model, _outputs(model, outputs, rows), parts)
            except Exception as e:
                done(None, e)
                return
            done(outs, None)

        self.worker.submit(self, parts, rows, batchable, finished)

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """A direct call with whole tensors, from a thread other than the event loop's."""
        rows = int(inputs[0].shape[0]) if inputs and inputs[0].dim() else 1
        run = self.worker.run(self, [list(inputs)], rows, True)
        outputs: list[torch.Tensor] = self.worker.wait_from_thread(run)[0]
        return outputs

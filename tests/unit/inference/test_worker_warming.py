"""The hook that starts the model worker when a version becomes loadable here
(``worker_loader.warming``): only for formats the worker runs, a folder's architecture
imported once per worker process, and a worker that cannot start is left to the first
request (logged, never raised into the models driver)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from p2pagent.errors import Unavailable
from p2pagent.inference.formats import ModelFormat
from p2pagent.inference.spec import ModelSpec
from p2pagent.inference.worker import ModelWorker
from p2pagent.inference.worker_loader import warming

PORTS = {
    "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 2]}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 2]}],
}


def spec(architecture: str = "") -> ModelSpec:
    doc: dict[str, Any] = dict(PORTS)
    if architecture:
        doc |= {"architecture": architecture, "arch_config": {}}
    return ModelSpec.from_dict(doc)


class FakeWorker:
    """Records what it was asked; ``pid`` changes when it is "replaced"."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.asked: list[str] = []
        self.fail = False

    def warm(self, architecture: str = "") -> asyncio.Future[dict[str, Any]] | None:
        if self.fail:
            raise Unavailable("cannot start the model worker: no memory")
        self.pid = self.pid or 100
        self.asked.append(architecture)
        if not architecture:
            return None
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        future.set_result({"ok": True})
        return future


async def test_folders_and_code_models_warm_the_worker_once_per_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeWorker()
    warm = warming(cast(ModelWorker, fake))
    caplog.set_level("INFO")
    warm(ModelFormat.SAFETENSORS, spec("mlp"))  # runs in the daemon: no worker for it
    assert fake.asked == []
    warm(ModelFormat.HF_FOLDER, spec("BertModel"))
    warm(ModelFormat.HF_FOLDER, spec("BertModel"))  # a second version: already done
    warm(ModelFormat.TORCHSCRIPT, spec())  # a code model: the worker only
    warm(ModelFormat.TORCHSCRIPT, spec())
    assert fake.asked == ["BertModel", ""]
    await asyncio.sleep(0)  # the answer's callback
    assert "model worker ready for BertModel models" in caplog.text
    fake.pid = 101  # a new worker process: it has imported nothing yet
    warm(ModelFormat.HF_FOLDER, spec("BertModel"))
    assert fake.asked == ["BertModel", "", "BertModel"]


async def test_a_worker_that_cannot_start_is_left_to_the_first_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeWorker()
    fake.fail = True
    warm = warming(cast(ModelWorker, fake))
    caplog.set_level("INFO")
    warm(ModelFormat.HF_FOLDER, spec("BertModel"))  # does not raise
    assert "not started ahead of the first request" in caplog.text
    fake.fail = False
    warm(ModelFormat.HF_FOLDER, spec("BertModel"))  # tried again next time
    assert fake.asked == ["BertModel"]

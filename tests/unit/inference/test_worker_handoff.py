"""Batches handed to the model worker at once (``ModelWorker.submit``: no task, the reader
completes them), against a worker serving from a thread of this process: ``worker_main.Worker``
over a socket pair, the same code on both ends of the channel, without a process or sandbox
(the integration tests run the confined process)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from p2pagent.errors import Internal
from p2pagent.inference import dtypes, worker_wire
from p2pagent.inference.cache import ModelCache
from p2pagent.inference.config import InferenceConfig
from p2pagent.inference.device import select_device
from p2pagent.inference.engine import InferenceEngine
from p2pagent.inference.formats import ModelFormat
from p2pagent.inference.spec import ModelSpec
from p2pagent.inference.tensors import HostTensor
from p2pagent.inference.worker import ModelWorker
from p2pagent.inference.worker_loader import isolating_loader
from p2pagent.inference.worker_main import Worker
from p2pagent.inference.worker_process import Slots, WorkerProcess

F32 = dtypes.BY_NAME["float32"]


class ThreadWorker:
    """Stands in for the worker's ``Popen``: ``Worker.serve`` on a thread. ``fault`` makes
    its next batch close the channel ("exit") or never answer ("hang")."""

    def __init__(self, fault: str = "") -> None:
        self.daemon_end, self._end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.getpid()
        self.fault = fault
        self.released = threading.Event()
        self.worker = Worker(self._end)
        forward = self.worker.forward

        def faulty(batch: Any) -> Any:  # every batch, a request seen before or not
            if self.fault == "exit":
                self._end.shutdown(socket.SHUT_RDWR)
                return None, []
            if self.fault == "hang":
                self.released.wait(60)
            return forward(batch)

        self.worker.forward = faulty  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.worker.serve()
        except OSError:
            pass  # the daemon closed its end while this one answered: a process would exit
        finally:
            self._end.close()

    def poll(self) -> int | None:
        return None if self.thread.is_alive() else 0

    def kill(self) -> None:
        self.released.set()
        try:
            self._end.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def wait(self, timeout: float | None = None) -> int:
        self.thread.join(timeout)
        return 0


@pytest.fixture
async def rig(
    demo_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[InferenceEngine, ModelWorker, list[ThreadWorker]]]:
    """An engine whose code models run in thread workers; the list holds each one started,
    and a fault put in ``faults`` goes to the next one."""
    secret = tmp_path / "secret"
    secret.mkdir()
    worker = ModelWorker.create(-1, [secret], 1, 5.0)
    started: list[ThreadWorker] = []

    def spawn() -> WorkerProcess:
        fake = ThreadWorker(faults.pop(0) if faults else "")
        started.append(fake)
        return worker._adopt(fake, fake.daemon_end)  # type: ignore[arg-type]

    faults: list[str] = []
    monkeypatch.setattr(worker, "_spawn", spawn)
    cache = ModelCache("cpu", 1 << 30, loader=isolating_loader(worker))
    spec = ModelSpec.from_json(demo_files["metadata"].read_text())
    cache.register("demo", demo_files["torchscript"], spec, ModelFormat.TORCHSCRIPT)
    engine = InferenceEngine(cache, InferenceConfig(), select_device("cpu"), set_threads=False)
    engine.faults = faults  # type: ignore[attr-defined]
    try:
        yield engine, worker, started
    finally:
        await engine.close()
        cache.close()
        await worker.aclose()
        for fake in started:
            fake.kill()
            fake.wait(10)


def _inputs(seed: int) -> list[HostTensor]:
    x = np.random.default_rng(seed).standard_normal((1 + seed % 3, 256), dtype=np.float32)
    return [HostTensor(F32, x)]


def _expected(demo_files: dict[str, Path], seed: int) -> torch.Tensor:
    module = torch.jit.load(str(demo_files["torchscript"]))
    with torch.inference_mode():
        out: torch.Tensor = module(torch.from_numpy(_inputs(seed)[0].array.copy()))
    return out


async def test_concurrent_batches_are_handed_over_at_once_and_each_gets_its_rows(
    rig: tuple[InferenceEngine, ModelWorker, list[ThreadWorker]], demo_files: dict[str, Path]
) -> None:
    engine, worker, started = rig
    await engine.infer("demo", _inputs(0))  # loads the model (the coroutine path)
    results = await asyncio.gather(*(engine.infer("demo", _inputs(s)) for s in range(40)))
    for seed, got in enumerate(results):
        (out,) = got.values()
        assert torch.allclose(out, _expected(demo_files, seed), atol=1e-5)
    assert worker.handed_over >= engine.stats()["demo"].batches - 1 > 0
    assert len(started) == 1 and worker.losses == 0


async def test_a_worker_lost_under_a_handed_over_batch_is_replaced_and_the_batch_runs_again(
    rig: tuple[InferenceEngine, ModelWorker, list[ThreadWorker]], demo_files: dict[str, Path]
) -> None:
    engine, worker, started = rig
    await engine.infer("demo", _inputs(0))
    started[0].fault = "exit"  # its next batch: the channel closes under it
    got = await engine.infer("demo", _inputs(5))
    assert torch.allclose(next(iter(got.values())), _expected(demo_files, 5), atol=1e-5)
    assert worker.losses == 1 and len(started) == 2


async def test_a_hung_worker_fails_the_handed_over_batch_with_internal_at_its_timeout(
    rig: tuple[InferenceEngine, ModelWorker, list[ThreadWorker]], demo_files: dict[str, Path]
) -> None:
    engine, worker, started = rig
    await engine.infer("demo", _inputs(0))
    started[0].fault = "hang"
    with pytest.raises(Internal, match="did not answer in 5s"):
        await engine.infer("demo", _inputs(1))
    assert worker.losses == 1
    got = await engine.infer("demo", _inputs(2))  # a new worker takes the next one
    assert torch.allclose(next(iter(got.values())), _expected(demo_files, 2), atol=1e-5)


async def test_a_slot_given_to_a_waiter_that_is_cancelled_goes_to_the_next() -> None:
    slots = Slots(1)
    held = slots.try_take()
    assert held == 0 and slots.try_take() is None
    first = asyncio.ensure_future(slots.take())
    second = asyncio.ensure_future(slots.take())
    await asyncio.sleep(0)
    slots.give(held)
    assert slots.try_take() is None  # someone waits: a hand-over does not jump the line
    first.cancel()  # woken, then cancelled before it ran
    assert await asyncio.wait_for(second, 10) == 0


async def test_a_batch_request_seen_before_is_neither_packed_nor_decoded_again(
    rig: tuple[InferenceEngine, ModelWorker, list[ThreadWorker]],
    demo_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lone caller's batches are all alike: the daemon sends the same request bytes, the
    worker runs them as it did before, and the daemon reads the same answer through the
    views it kept; every answer still carries its own batch's outputs (copies, not views
    of the region the next batch overwrites)."""
    engine, worker, started = rig
    await engine.infer("demo", _inputs(0))  # loads the model (the coroutine path)
    await engine.infer("demo", _inputs(3))  # the first handed-over batch of this shape
    decoded: list[bytes] = []
    decode = worker_wire.decode

    def counting(data: bytes, fds: list[int]) -> dict[str, Any]:
        decoded.append(data)
        return decode(data, fds)

    monkeypatch.setattr(worker_wire, "decode", counting)
    seeds = [3 * k for k in range(2, 14)]  # one row each: one input and output layout
    got = [await engine.infer("demo", _inputs(s)) for s in seeds]
    for seed, out in zip(seeds, got):
        assert torch.allclose(next(iter(out.values())), _expected(demo_files, seed), atol=1e-5)
    # Both sides decode at most a slot's first request and answer (two slots), not two
    # messages a batch.
    assert len(decoded) <= 4 < 2 * len(seeds)
    assert len(started) == 1 and worker.losses == 0

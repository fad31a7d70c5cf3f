"""The engine on CPU: batching is invisible in results, failures stay in their batch."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from p2pagent.errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from p2pagent.inference import architectures, tensors
from p2pagent.inference.batching import Decision
from p2pagent.inference.cache import ModelCache
from p2pagent.inference.config import InferenceConfig
from p2pagent.inference.device import select_device
from p2pagent.inference.engine import InferenceEngine
from p2pagent.inference.formats import LoadedModel, ModelFormat
from p2pagent.inference.remote_model import RemoteModel
from p2pagent.inference.spec import ModelSpec, PortSpec

VEC = ModelSpec((PortSpec("x", "float32", (-1, 4)),), (PortSpec("y", "float32", (-1, 4)),))


class Zoo:
    """Test models served through the real cache by an injected loader."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.rows_seen: dict[str, list[int]] = {}
        torch.manual_seed(0)
        self.mlp_spec = architectures.get("mlp").spec({"in": 4, "hidden": [16], "out": 3})
        self.mlp = architectures.get("mlp").build(dict(self.mlp_spec.arch_config)).eval()
        self.models: dict[str, tuple[ModelSpec, Callable[..., Any]]] = {
            "double": (VEC, lambda x: x * 2),
            "mlp": (self.mlp_spec, self.mlp),
            "gate": (VEC, self._gated),
            "boom": (VEC, self._boom),
            "oom": (VEC, self._oom),
            "pair": (
                ModelSpec(
                    (PortSpec("a", "float32", (-1, 2)), PortSpec("b", "int64", (-1,))),
                    (PortSpec("sum", "float32", (-1, 2)), PortSpec("b2", "int64", (-1,))),
                ),
                lambda a, b: {"b2": b * 2, "sum": a + b[:, None]},
            ),
            "fixed": (
                ModelSpec((PortSpec("x", "float32", (3,)),), (PortSpec("y", "float32", (3,)),)),
                lambda x: x + 1,
            ),
        }

    def _gated(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        assert self.gate.wait(10)
        return x

    def _boom(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()):
            raise ValueError("negative input")
        return x

    def _oom(self, x: torch.Tensor) -> torch.Tensor:
        self.rows_seen.setdefault("oom", []).append(int(x.shape[0]))
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return x * 3

    def load(
        self, name: str, path: Path, spec: ModelSpec, device: torch.device, fmt: object
    ) -> LoadedModel:
        spec, fn = self.models[name]

        def recorded(*xs: torch.Tensor) -> Any:
            self.rows_seen.setdefault(f"{name}:calls", []).append(int(xs[0].shape[0]))
            return fn(*xs)

        return LoadedModel(name, spec, ModelFormat.TORCHSCRIPT, recorded, device, 1000)


@pytest.fixture
async def zoo_engine() -> AsyncIterator[tuple[Zoo, InferenceEngine]]:
    zoo = Zoo()
    device = select_device("cpu")
    cache = ModelCache(device.device, 1 << 30, loader=zoo.load)
    for name, (spec, _) in zoo.models.items():
        cache.register(name, Path(f"{name}.pt"), spec)
    config = InferenceConfig(max_batch_size=8, max_queued=16, intra_op_threads=1)
    engine = InferenceEngine(cache, config, device, set_threads=False)
    try:
        yield zoo, engine
    finally:
        zoo.gate.set()
        await engine.close()
        cache.close()


async def hold_device(zoo: Zoo, engine: InferenceEngine) -> asyncio.Task[Any]:
    """Starts a batch that blocks the worker until ``zoo.gate`` is set."""
    zoo.gate.clear()
    zoo.entered.clear()
    task = asyncio.ensure_future(engine.infer("gate", [torch.zeros(1, 4)]))
    assert await asyncio.to_thread(zoo.entered.wait, 10)
    return task


async def until_queued(engine: InferenceEngine, n: int) -> None:
    """Waits until ``n`` requests wait in the engine's queue (their model loaded, admitted):
    a fixed sleep is too short on a loaded machine, where the first load of a model (in a
    thread) can take longer, and the batch under test would then form without them."""
    for _ in range(2000):
        if engine.queued >= n:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"only {engine.queued} of {n} requests reached the queue in 10 s")


async def test_single_request_round_trip(zoo_engine: tuple[Zoo, InferenceEngine]) -> None:
    _, engine = zoo_engine
    out = await engine.infer("double", {"x": torch.ones(2, 4)})
    assert set(out) == {"y"} and torch.equal(out["y"], torch.full((2, 4), 2.0))


async def test_batched_outputs_equal_unbatched(zoo_engine: tuple[Zoo, InferenceEngine]) -> None:
    zoo, engine = zoo_engine
    g = torch.Generator().manual_seed(3)
    xs = [
        torch.randn(int(torch.randint(1, 3, (1,), generator=g)), 4, generator=g) for _ in range(12)
    ]
    with torch.inference_mode():
        expected = [zoo.mlp(x) for x in xs]
    gate = await hold_device(zoo, engine)
    pending = [asyncio.ensure_future(engine.infer("mlp", [x])) for x in xs]
    await until_queued(engine, len(xs))
    zoo.gate.set()
    await gate
    results = await asyncio.gather(*pending)
    for got, want in zip(results, expected):
        assert got["output"].shape == want.shape
        assert torch.allclose(got["output"], want, atol=1e-6)
    stats = engine.stats()["mlp"]
    assert stats.items == 12 and stats.batches < 12  # they did share batches
    assert max(zoo.rows_seen["mlp:calls"]) <= 8  # max_batch_size in rows


async def test_multi_input_multi_output_model(zoo_engine: tuple[Zoo, InferenceEngine]) -> None:
    zoo, engine = zoo_engine
    gate = await hold_device(zoo, engine)
    calls = [
        engine.infer("pair", {"a": torch.ones(1, 2) * i, "b": torch.tensor([i])}) for i in range(3)
    ]
    pending = [asyncio.ensure_future(c) for c in calls]
    await until_queued(engine, 3)
    zoo.gate.set()
    await gate
    for i, out in enumerate(await asyncio.gather(*pending)):
        assert torch.equal(out["sum"], torch.full((1, 2), 2.0 * i))
        assert out["b2"].tolist() == [2 * i]
    assert zoo.rows_seen["pair:calls"] == [3]


async def test_unbatchable_model_runs_requests_one_by_one(
    zoo_engine: tuple[Zoo, InferenceEngine],
) -> None:
    zoo, engine = zoo_engine
    outs = await asyncio.gather(*(engine.infer("fixed", [torch.zeros(3)]) for _ in range(3)))
    assert all(torch.equal(o["y"], torch.ones(3)) for o in outs)
    assert zoo.rows_seen["fixed:calls"] == [3, 3, 3]  # never concatenated


async def test_a_full_batch_is_priced_only_for_models_that_batch(
    zoo_engine: tuple[Zoo, InferenceEngine],
) -> None:
    """What the task scheduler may hand the engine ahead (``full_batch_s``): max_batch_size
    rows at the measured cost for a model that batches; None for one that runs alone."""
    _, engine = zoo_engine
    assert engine.full_batch_s("double") is None  # nothing measured yet
    await engine.infer("double", {"x": torch.ones(2, 4)})
    per_row = engine.marginal_seconds_per_row("double")
    assert per_row is not None
    assert engine.full_batch_s("double") == pytest.approx(8 * per_row)
    await engine.infer("fixed", [torch.zeros(3)])
    assert engine.full_batch_s("fixed") is None


async def test_raising_model_fails_only_its_batch(zoo_engine: tuple[Zoo, InferenceEngine]) -> None:
    zoo, engine = zoo_engine
    gate = await hold_device(zoo, engine)
    bad = asyncio.ensure_future(engine.infer("boom", [-torch.ones(1, 4)]))
    other = asyncio.ensure_future(engine.infer("double", [torch.ones(1, 4)]))
    await until_queued(engine, 2)
    zoo.gate.set()
    await gate
    with pytest.raises(Internal, match=r"model 'boom' failed.*ValueError: negative input"):
        await bad
    assert torch.equal((await other)["y"], torch.full((1, 4), 2.0))
    # ...and the engine goes on.
    assert torch.equal((await engine.infer("boom", [torch.ones(1, 4)]))["y"], torch.ones(1, 4))
    assert engine.stats()["boom"].failed_batches == 1


async def test_out_of_memory_splits_the_batch(zoo_engine: tuple[Zoo, InferenceEngine]) -> None:
    zoo, engine = zoo_engine
    gate = await hold_device(zoo, engine)
    xs = [torch.full((1, 4), float(i)) for i in range(7)]
    pending = [asyncio.ensure_future(engine.infer("oom", [x])) for x in xs]
    await until_queued(engine, len(xs))
    zoo.gate.set()
    await gate
    for x, out in zip(xs, await asyncio.gather(*pending)):
        assert torch.equal(out["y"], x * 3)
    seen = zoo.rows_seen["oom"]  # 7 -> 3 + 4 -> (1 + 2) + (2 + 2)
    assert seen[0] == 7 and sum(r for r in seen if r <= 2) == 7
    assert engine.oom_splits >= 1


async def test_deadline_expires_in_the_queue(zoo_engine: tuple[Zoo, InferenceEngine]) -> None:
    zoo, engine = zoo_engine
    gate = await hold_device(zoo, engine)
    late = engine.infer("double", [torch.ones(1, 4)], deadline=time.monotonic() + 0.02)
    with pytest.raises(DeadlineExceeded, match="passed its deadline"):
        await late  # fails while the device is still busy: no compute spent on it
    zoo.gate.set()
    await gate
    assert engine.stats()["double"].expired == 1 and engine.stats()["double"].batches == 0
    with pytest.raises(DeadlineExceeded):
        await engine.infer("double", [torch.ones(1, 4)], deadline=time.monotonic() - 1)


async def test_queue_full_is_resource_exhausted(zoo_engine: tuple[Zoo, InferenceEngine]) -> None:
    zoo, engine = zoo_engine
    gate = await hold_device(zoo, engine)
    pending = [asyncio.ensure_future(engine.infer("double", [torch.ones(1, 4)])) for _ in range(16)]
    await until_queued(engine, 16)
    with pytest.raises(ResourceExhausted, match="queue is full"):
        await engine.infer("double", [torch.ones(1, 4)])
    zoo.gate.set()
    await gate
    assert len(await asyncio.gather(*pending)) == 16


async def test_cancelled_caller_leaves_the_queue(zoo_engine: tuple[Zoo, InferenceEngine]) -> None:
    zoo, engine = zoo_engine
    gate = await hold_device(zoo, engine)
    waiter = asyncio.ensure_future(engine.infer("double", [torch.ones(1, 4)]))
    await until_queued(engine, 1)
    assert engine.queued == 1
    waiter.cancel()
    await asyncio.sleep(0)
    assert engine.queued == 0 and engine.stats()["double"].cancelled == 1
    zoo.gate.set()
    await gate


async def test_bad_requests(zoo_engine: tuple[Zoo, InferenceEngine]) -> None:
    _, engine = zoo_engine
    with pytest.raises(NotFound, match="'nope'"):
        await engine.infer("nope", [torch.ones(1, 4)])
    with pytest.raises(InvalidArgument, match="expects dtype float32, received int64"):
        await engine.infer("double", [torch.ones(1, 4, dtype=torch.int64)])
    with pytest.raises(InvalidArgument, match=r"expects shape \[-1, 4\]"):
        await engine.infer("double", {"x": torch.ones(1, 5)})


async def test_close_fails_queued_requests() -> None:
    zoo = Zoo()
    device = select_device("cpu")
    cache = ModelCache(device.device, 1 << 30, loader=zoo.load)
    for name, (spec, _) in zoo.models.items():
        cache.register(name, Path(f"{name}.pt"), spec)
    engine = InferenceEngine(cache, InferenceConfig(), device, set_threads=False)
    gate = await hold_device(zoo, engine)
    queued = asyncio.ensure_future(engine.infer("double", [torch.ones(1, 4)]))
    await until_queued(engine, 1)
    closing = asyncio.ensure_future(engine.close())
    await asyncio.sleep(0.01)
    zoo.gate.set()
    await closing
    await gate  # the running batch finished normally
    with pytest.raises(Unavailable):
        await queued
    with pytest.raises(Unavailable):
        await engine.infer("double", [torch.ones(1, 4)])
    cache.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none found")
async def test_cuda_engine_matches_cpu() -> None:
    torch.manual_seed(0)
    spec = architectures.get("mlp").spec({"in": 4, "hidden": [16], "out": 3})
    module = architectures.get("mlp").build(dict(spec.arch_config)).eval()
    device = select_device("cuda:0")
    assert device.description.startswith("cuda:0 (")
    gpu_module = module.to(device.device)

    def load(name: str, path: Path, s: ModelSpec, dev: torch.device, fmt: object) -> LoadedModel:
        return LoadedModel(name, s, ModelFormat.SAFETENSORS, gpu_module, dev, 1000)

    cache = ModelCache(device.device, 1 << 30, loader=load)
    cache.register("mlp", Path("mlp.pt"), spec)
    engine = InferenceEngine(cache, InferenceConfig(), device, set_threads=False)
    assert engine.config.pipeline_depth == 2
    xs = [torch.randn(2, 4) for _ in range(20)]
    outs = await asyncio.gather(*(engine.infer("mlp", [x]) for x in xs))
    cpu_module = module.to("cpu")
    with torch.inference_mode():
        for x, out in zip(xs, outs):
            assert out["output"].device.type == "cpu"
            assert torch.allclose(out["output"], cpu_module(x), atol=1e-4)
    await engine.close()
    cache.close()


async def test_wire_inputs_batch_with_torch_inputs(
    zoo_engine: tuple[Zoo, InferenceEngine],
) -> None:
    """Decoded wire tensors (read-only views of the message) join torch tensors in a batch;
    the message bytes are left as they were."""
    zoo, engine = zoo_engine
    xs = [torch.full((1, 4), float(i)) for i in range(6)]
    wires = [tensors.to_proto("x", x) for x in xs]
    gate = await hold_device(zoo, engine)
    calls = [
        engine.infer("double", tensors.many_decode([w], 1 << 10) if i % 2 else {"x": xs[i]})
        for i, w in enumerate(wires)
    ]
    pending = asyncio.gather(*calls)
    await asyncio.sleep(0)
    zoo.gate.set()
    await gate
    results = await pending
    for x, got in zip(xs, results):
        assert torch.equal(got["y"], x * 2)
    assert max(zoo.rows_seen["double:calls"]) > 1  # host and torch inputs shared a batch
    assert all(w.data == tensors.to_proto("x", x).data for w, x in zip(wires, xs))


class SlowWorker(RemoteModel):
    """A model "in the model worker" without a process: the engine's hand-over path
    (``RemoteModel.submit``), each batch answered 5 ms later on the loop."""

    def __init__(self) -> None:  # nothing behind it: no worker, no files
        self.rows: list[int] = []

    def submit(
        self,
        model: LoadedModel,
        parts: Sequence[Sequence[Any]],
        done: Callable[[list[list[torch.Tensor]] | None, BaseException | None], None],
    ) -> None:
        self.rows.append(sum(int(p[0].shape[0]) for p in parts))
        outs = [[p[0] * 2] for p in parts]
        asyncio.get_running_loop().call_later(0.005, done, outs, None)


def worker_engine(
    remote: RemoteModel, config: InferenceConfig
) -> tuple[InferenceEngine, ModelCache]:
    """An engine serving ``remote`` as model "w" (its batches through the hand-over path)."""
    device = select_device("cpu")

    def load(name: str, path: Path, spec: ModelSpec, dev: torch.device, fmt: object) -> LoadedModel:
        return LoadedModel(name, VEC, ModelFormat.TORCHSCRIPT, remote, dev, 1000)

    cache = ModelCache(device.device, 1 << 30, loader=load)
    cache.register("w", Path("w.pt"), VEC)
    return InferenceEngine(cache, config, device, set_threads=False), cache


async def test_a_batch_settling_for_the_worker_is_polled_again_until_it_goes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Callers that overlap teach the policy to let a worker batch settle (batching rule 3):
    lone requests are then held, for a while and later for one loop turn, with nothing else
    to wake the engine: it polls again on its own (``Decision.repoll``, ``wake_at``), or a
    request would never run."""
    remote = SlowWorker()
    engine, cache = worker_engine(
        remote, InferenceConfig(max_batch_size=16, intra_op_threads=1, max_queue_delay_s=0.01)
    )
    decisions: list[Decision] = []
    poll = engine._policy.poll

    def spy(now: float) -> Decision:
        decisions.append(poll(now))
        return decisions[-1]

    monkeypatch.setattr(engine._policy, "poll", spy)
    try:
        for callers in (1, 4, 1, 4, *[1] * 80):
            xs = [torch.full((1, 4), float(i)) for i in range(callers)]
            calls = asyncio.gather(*(engine.infer("w", [x]) for x in xs))
            for x, out in zip(xs, await asyncio.wait_for(calls, 10)):
                assert torch.equal(out["y"], x * 2)
        assert remote.rows[:4] == [1, 4, 1, 4]  # callers of one turn share a batch
        held = [d for d in decisions if not d.batches]
        assert any(d.repoll for d in held) and any(d.wake_at for d in held)
    finally:
        await engine.close()
        cache.close()


async def test_requests_joining_a_held_worker_batch_are_answered_without_polls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many callers: arrivals that join a batch the policy holds to a time skip the poll
    (``BatchPolicy.quiet``); the engine's timer then sends the batch, and every request is
    answered."""
    remote = SlowWorker()
    engine, cache = worker_engine(
        remote, InferenceConfig(max_batch_size=64, intra_op_threads=1, max_queue_delay_s=0.02)
    )
    quiet_answers: list[bool] = []
    quiet = engine._policy.quiet

    def spy(request_id: int) -> bool:
        quiet_answers.append(quiet(request_id))
        return quiet_answers[-1]

    monkeypatch.setattr(engine._policy, "quiet", spy)

    async def caller(k: int) -> None:
        for i in range(20):
            await asyncio.sleep(0.001 * (k % 4))  # arrivals spread out, not in one turn
            x = torch.full((1, 4), float(k * 100 + i))
            out = await engine.infer("w", [x])
            assert torch.equal(out["y"], x * 2)

    try:
        await asyncio.wait_for(asyncio.gather(*(caller(k) for k in range(12))), 30)
        assert any(quiet_answers)  # some arrivals joined a held batch without a poll
        assert max(remote.rows) > 1
    finally:
        await engine.close()
        cache.close()

"""Agent.Infer end to end against a real daemon on the CPU, including every bad input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from p2pagent._proto import agent_pb2, agent_pb2_grpc, common_pb2
from p2pagent.inference import demo_model
from p2pagent.testing.channels import agent_stub
from p2pagent.testing.daemon import Daemon


class Flaky(torch.nn.Module):
    """Fails any batch whose first value is above 1000, to show one batch failing alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x[0, 0] > 1000.0):
            raise RuntimeError("flaky model refuses large values")
        return x * 2.0


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    demo_model.write_all(d)
    torch.jit.save(torch.jit.script(Flaky()), str(d / "flaky.pt"))
    port = {"name": "input", "dtype": "float32", "shape": [-1, 4]}
    meta = {"inputs": [port], "outputs": [{**port, "name": "output"}]}
    (d / "flaky.metadata.json").write_text(json.dumps(meta))
    (d / "broken.pt").write_bytes(b"this is not a model at all")
    (d / "broken.metadata.json").write_text(json.dumps(meta))
    # Holds the engine 300 ms a batch without using the CPU: a request behind it must wait.
    demo_model.write_busy(d, "busy", {"features": 4, "ms_per_row": 0, "ms_per_batch": 300})
    return d


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, certs_dir: Path, models: Path
) -> Iterator[Daemon]:
    serve = [
        f"demo={models / 'demo.torchscript.pt'}",
        f"mlp={models / 'demo.safetensors'}",
        f"exported={models / 'demo.pt2'}",
        f"noop={models / 'noop.torchscript.pt'}",
        f"flaky={models / 'flaky.pt'}",
        f"broken={models / 'broken.pt'}",
        f"busy={models / 'busy.safetensors'}",
    ]
    args = [a for s in serve for a in ("--serve", s)]
    d = Daemon("n6", certs_dir, tmp_path_factory.mktemp("data") / "n6", args=args).start()
    try:
        yield d
    finally:
        d.kill()


def _tensor(arr: np.ndarray, name: str = "input") -> common_pb2.Tensor:
    return common_pb2.Tensor(
        name=name,
        dtype=common_pb2.DTYPE_FLOAT32,
        shape=list(arr.shape),
        data=arr.astype("<f4").tobytes(),
    )


def _out(resp: agent_pb2.InferResponse) -> np.ndarray:
    t = resp.outputs[0]
    return np.frombuffer(t.data, dtype="<f4").reshape(tuple(t.shape))


@pytest.mark.parametrize("model", ["demo", "mlp", "exported"])
async def test_each_format_gives_the_offline_answer(
    node: Daemon, certs_dir: Path, models: Path, model: str
) -> None:
    x = np.load(models / "sample_input.npy")
    expected = np.array(json.loads((models / "sample_output.json").read_text())["output"])
    ch, stub = agent_stub(node.address, certs_dir)
    async with ch:
        resp = await stub.Infer(
            agent_pb2.InferRequest(model=model, inputs=[_tensor(x)]), timeout=60
        )
    assert resp.executor == "n6"
    np.testing.assert_allclose(_out(resp), expected, rtol=1e-4, atol=1e-5)


async def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(
    node: Daemon, certs_dir: Path
) -> None:
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((1, 256), dtype=np.float32) for _ in range(24)]
    ch, stub = agent_stub(node.address, certs_dir)
    async with ch:
        solo = [
            _out(
                await stub.Infer(
                    agent_pb2.InferRequest(model="demo", inputs=[_tensor(x)]), timeout=60
                )
            )
            for x in xs[:3]
        ]
        together = await asyncio.gather(
            *[
                stub.Infer(agent_pb2.InferRequest(model="demo", inputs=[_tensor(x)]), timeout=60)
                for x in xs
            ]
        )
    for a, b in zip(solo, together[:3], strict=True):
        np.testing.assert_allclose(a, _out(b), rtol=1e-4, atol=1e-5)
    assert len({_out(r).tobytes() for r in together}) == len(xs)


async def _code(
    stub: agent_pb2_grpc.AgentServiceStub, req: agent_pb2.InferRequest, wait_s: float = 30
) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Infer(req, timeout=wait_s)
    return e.value.code(), e.value.details() or ""


async def test_bad_inputs_get_specific_errors(node: Daemon, certs_dir: Path) -> None:
    ok = np.zeros((1, 256), dtype=np.float32)
    ch, stub = agent_stub(node.address, certs_dir)
    async with ch:
        code, msg = await _code(stub, agent_pb2.InferRequest(model="nope", inputs=[_tensor(ok)]))
        assert code is grpc.StatusCode.NOT_FOUND and "nope" in msg

        wrong_dtype = common_pb2.Tensor(
            name="input", dtype=common_pb2.DTYPE_INT64, shape=[1, 256], data=bytes(8 * 256)
        )
        code, msg = await _code(stub, agent_pb2.InferRequest(model="demo", inputs=[wrong_dtype]))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "int64" in msg.lower()

        wrong_rank = _tensor(np.zeros((256,), dtype=np.float32))
        code, msg = await _code(stub, agent_pb2.InferRequest(model="demo", inputs=[wrong_rank]))
        assert code is grpc.StatusCode.INVALID_ARGUMENT

        wrong_shape = _tensor(np.zeros((1, 255), dtype=np.float32))
        code, msg = await _code(stub, agent_pb2.InferRequest(model="demo", inputs=[wrong_shape]))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "255" in msg

        short = common_pb2.Tensor(
            name="input", dtype=common_pb2.DTYPE_FLOAT32, shape=[1, 256], data=bytes(100)
        )
        code, msg = await _code(stub, agent_pb2.InferRequest(model="demo", inputs=[short]))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "100" in msg

        huge = common_pb2.Tensor(
            name="input", dtype=common_pb2.DTYPE_FLOAT32, shape=[1 << 40, 256], data=b""
        )
        code, _ = await _code(stub, agent_pb2.InferRequest(model="demo", inputs=[huge]))
        assert code is grpc.StatusCode.INVALID_ARGUMENT

        code, msg = await _code(
            stub,
            agent_pb2.InferRequest(model="broken", inputs=[_tensor(np.zeros((1, 4), np.float32))]),
        )
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "not" in msg

        code, msg = await _code(stub, agent_pb2.InferRequest(model="", inputs=[_tensor(ok)]))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        # The daemon is still fine afterwards.
        resp = await stub.Infer(
            agent_pb2.InferRequest(model="demo", inputs=[_tensor(ok)]), timeout=30
        )
        assert _out(resp).shape == (1, 10)


async def test_a_raising_model_fails_only_its_batch(node: Daemon, certs_dir: Path) -> None:
    ch, stub = agent_stub(node.address, certs_dir)
    async with ch:
        code, msg = await _code(
            stub,
            agent_pb2.InferRequest(
                model="flaky", inputs=[_tensor(np.full((1, 4), 5000, np.float32))]
            ),
        )
        assert code is grpc.StatusCode.INTERNAL and "refuses large values" in msg
        resp = await stub.Infer(
            agent_pb2.InferRequest(model="flaky", inputs=[_tensor(np.ones((1, 4), np.float32))]),
            timeout=30,
        )
        np.testing.assert_allclose(_out(resp), 2.0)


async def test_expired_deadline_is_deadline_exceeded(node: Daemon, certs_dir: Path) -> None:
    # The engine is held by a slow batch, so the second request waits behind it past its
    # deadline (a request alone with a sub-millisecond deadline sometimes beat the clock).
    ch, stub = agent_stub(node.address, certs_dir)
    x = _tensor(np.zeros((1, 4), np.float32))
    async with ch:
        first = asyncio.ensure_future(
            stub.Infer(agent_pb2.InferRequest(model="busy", inputs=[x]), timeout=60)
        )
        await asyncio.sleep(0.1)  # it holds the engine now (not a timing assertion)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Infer(agent_pb2.InferRequest(model="busy", inputs=[x]), timeout=0.05)
        assert (await first).outputs  # the first one is served all the same
    assert e.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_full_queue_is_resource_exhausted(
    tmp_path: Path, certs_dir: Path, models: Path
) -> None:
    env = {"P2PAGENT_INFERENCE__MAX_QUEUED": "2", "P2PAGENT_INFERENCE__MAX_BATCH_SIZE": "1"}
    args = ["--serve", f"demo={models / 'demo.torchscript.pt'}"]
    d = Daemon("n7", certs_dir, tmp_path / "n7", args=args, env=env).start()
    try:
        ch, stub = agent_stub(d.address, certs_dir)
        x = _tensor(np.zeros((64, 256), np.float32))
        async with ch:
            results = await asyncio.gather(
                *[stub.Infer(agent_pb2.InferRequest(model="demo", inputs=[x]), timeout=60)
                  for _ in range(40)],
                return_exceptions=True,
            )  # fmt: skip
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        served = [r for r in results if isinstance(r, agent_pb2.InferResponse)]
        others = [r for r in results if r not in refused and r not in served]
        assert refused and served, (len(refused), len(served), others[:2])
        assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}, [
            r.details() for r in refused
        ][:3]
    finally:
        d.kill()

"""A model whose worker dies at every load fails its Infer at once, with INTERNAL naming the
model: not after the task layer's 8 attempts, each starting two workers (28 s). A worker
killed from outside while it loads still costs no request (tried again in a new worker)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from p2pagent._proto import agent_pb2, common_pb2
from p2pagent.inference import demo_model
from p2pagent.inference.isolation import EXIT_ON_LOAD_ENV
from p2pagent.testing.channels import agent_stub
from p2pagent.testing.daemon import Daemon

#: What the daemon logs when it loses a worker that exited.
LOST = "the model worker (pid"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    demo_model.write_all(d)
    return d


def _serve(models: Path) -> list[str]:
    # demo: TorchScript, loaded in the worker; mlp: safetensors, run in the daemon itself.
    serve = [f"demo={models / 'demo.torchscript.pt'}", f"mlp={models / 'demo.safetensors'}"]
    return [a for s in serve for a in ("--serve", s)]


def _request(model: str) -> agent_pb2.InferRequest:
    x = demo_model.sample_input(2).numpy().astype("<f4")
    t = common_pb2.Tensor(
        name="input", dtype=common_pb2.DTYPE_FLOAT32, shape=list(x.shape), data=x.tobytes()
    )
    return agent_pb2.InferRequest(model=model, inputs=[t])


async def test_a_model_that_kills_its_worker_at_every_load_fails_at_once(
    tmp_path: Path, certs_dir: Path, models: Path
) -> None:
    # The default tasks.max_attempts (8): the failure must not be retried.
    env = {EXIT_ON_LOAD_ENV: "1"}
    node = Daemon("n1", certs_dir, tmp_path / "n1", args=_serve(models), env=env).start()
    try:
        ch, stub = agent_stub(node.address, certs_dir)
        async with ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Infer(_request("demo"), timeout=120)
            assert err.value.code() == grpc.StatusCode.INTERNAL, err.value.details()
            details = err.value.details() or ""
            assert "model 'demo' cannot be loaded on this node" in details, details
            assert "exited with status 3" in details and "twice in a row" in details, details
            # One attempt of the task: two workers, each lost at the load (8 attempts: 16).
            assert node.log_path.read_text().count(LOST) == 2, node.log_tail()
            # The node goes on serving what does not need the worker.
            reply = await stub.Infer(_request("mlp"), timeout=60)
            assert reply.outputs
        assert node.running
        assert "Traceback" not in node.log_path.read_text()
    finally:
        node.kill()


async def test_a_worker_killed_while_it_loads_costs_no_request(
    tmp_path: Path, certs_dir: Path, models: Path
) -> None:
    node = Daemon("n2", certs_dir, tmp_path / "n2", args=_serve(models)).start()
    try:
        ch, stub = agent_stub(node.address, certs_dir)
        async with ch:
            call = asyncio.ensure_future(stub.Infer(_request("demo"), timeout=120))
            deadline = time.monotonic() + 60
            while not (first := node.worker_pids()):  # the first Infer starts the worker
                assert time.monotonic() < deadline, node.log_tail()
                await asyncio.sleep(0.005)
            # Killed while it starts (importing torch): the model's load waits behind that.
            os.kill(first[0], signal.SIGKILL)
            reply = await call
            out = np.frombuffer(reply.outputs[0].data, dtype="<f4")
            assert out.size and np.isfinite(out).all()
            assert node.log_path.read_text().count(LOST) == 1, node.log_tail()
            assert node.worker_pids() and node.worker_pids()[0] != first[0]
        assert node.running
    finally:
        node.kill()

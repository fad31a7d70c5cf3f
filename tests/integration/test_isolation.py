"""Code-bearing models run in a confined worker process (issue 21 item 5), against a real
daemon: the worker cannot open the node's key, certificate folder or data folder; it holds no
descriptor of the daemon's but its control socket; its answers equal the daemon's own engine;
a killed or hung worker fails its batch with UNAVAILABLE and the next request succeeds."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from p2pagent._proto import agent_pb2, agent_pb2_grpc, common_pb2
from p2pagent.inference import demo_model, sandbox
from p2pagent.testing.channels import agent_stub
from p2pagent.testing.daemon import Daemon


class Spin(torch.nn.Module):
    """Never finishes in practice: a TorchScript loop of a hundred million additions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for _ in range(100_000_000):
            y = y + 1.0
        return y


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    demo_model.write_all(d)
    torch.jit.save(torch.jit.script(Spin()), str(d / "spin.pt"))
    (d / "spin.metadata.json").write_text(
        '{"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 4]}],'
        ' "outputs": [{"name": "output", "dtype": "float32", "shape": [-1, 4]}]}'
    )
    return d


def _serve(models: Path) -> list[str]:
    serve = [
        f"demo={models / 'demo.torchscript.pt'}",
        f"exported={models / 'demo.pt2'}",
        f"mlp={models / 'demo.safetensors'}",
        f"spin={models / 'spin.pt'}",
    ]
    return [a for s in serve for a in ("--serve", s)]


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, certs_dir: Path, models: Path
) -> Iterator[Daemon]:
    data = tmp_path_factory.mktemp("data") / "n7"
    probe = [str(certs_dir / "n7.key"), str(certs_dir), str(certs_dir / "ca.key"), str(data)]
    env = {
        "P2PAGENT_WORKER_PROBE": os.pathsep.join(probe),
        "P2PAGENT_INFERENCE__WORKER_TIMEOUT_S": "20",
        # One attempt: a failed batch reaches the caller instead of being retried (the tasks
        # layer retries UNAVAILABLE, which is right for a worker killed from outside).
        "P2PAGENT_TASKS__MAX_ATTEMPTS": "1",
    }
    d = Daemon("n7", certs_dir, data, args=_serve(models), env=env).start()
    try:
        yield d
    finally:
        d.kill()


@pytest.fixture(scope="module")
def in_process(
    tmp_path_factory: pytest.TempPathFactory, certs_dir: Path, models: Path
) -> Iterator[Daemon]:
    """The same models served by the daemon's own engine (isolation off), for comparison."""
    env = {"P2PAGENT_INFERENCE__ISOLATE_CODE_MODELS": "false"}
    data = tmp_path_factory.mktemp("data") / "n8"
    d = Daemon("n8", certs_dir, data, args=_serve(models), env=env).start()
    try:
        yield d
    finally:
        d.kill()


def _request(model: str, x: np.ndarray) -> agent_pb2.InferRequest:
    t = common_pb2.Tensor(
        name="input",
        dtype=common_pb2.DTYPE_FLOAT32,
        shape=list(x.shape),
        data=x.astype("<f4").tobytes(),
    )
    return agent_pb2.InferRequest(model=model, inputs=[t])


def _out(resp: agent_pb2.InferResponse) -> np.ndarray:
    t = resp.outputs[0]
    return np.frombuffer(t.data, dtype="<f4").reshape(tuple(t.shape))


async def _next_worker(daemon: Daemon, old: int) -> int:
    """The worker that replaces ``old`` (waits for it to start)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = [p for p in daemon.worker_pids() if p != old]
        if pids:
            return pids[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no new model worker in 60s:\n{daemon.log_tail()}")


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


async def _infer(stub: agent_pb2_grpc.AgentServiceStub, model: str, x: np.ndarray) -> np.ndarray:
    return _out(await stub.Infer(_request(model, x), timeout=120))


async def test_the_worker_cannot_open_the_key_the_certificates_or_the_data(
    node: Daemon, certs_dir: Path
) -> None:
    ch, stub = agent_stub(node.address, certs_dir)
    async with ch:
        await _infer(stub, "demo", demo_model.sample_input(1).numpy())
    workers = node.worker_pids()
    assert len(workers) == 1, node.log_tail()
    pid = workers[0]
    if not sandbox.landlock_abi() and int(_status(pid)["Uid"].split()[0]) == 0:
        pytest.skip("no Landlock on this kernel and no other uid can run Python here")
    # The files exist and this test's own process (the daemon's uid) can read them: the
    # refusals below come from the worker's confinement, not from missing files.
    key = certs_dir / "n7.key"
    assert key.read_bytes() and (certs_dir / "ca.key").read_bytes()
    log = node.log_path.read_text()
    for path in (key, certs_dir, certs_dir / "ca.key", node.data):
        outcome = re.search(rf"open {re.escape(str(path))} from the worker: (\w+)", log)
        assert outcome is not None, log[-3000:]
        assert outcome.group(1) == "EACCES", outcome.group(0)
    started = re.search(r"model worker started: pid (\d+), uid (\d+).*Landlock (.*)", log)
    assert started is not None and int(started.group(1)) == pid
    status = _status(pid)
    assert status["NoNewPrivs"] == "1"
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    assert int(status["CapBnd"], 16) == 0
    uid = int(status["Uid"].split()[0])
    # Another uid where the daemon runs as root and that uid can reach Python; otherwise
    # Landlock must be what refused the opens above (the start-up line says which).
    assert uid != 0 or started.group(3).startswith("ABI"), started.group(0)
    assert "model worker runs as" in log
    # Descriptors: its control socket, the stderr pipe, /dev/null and shared memory only.
    targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    assert sum(t.startswith("socket:") for t in targets) == 1, targets
    for t in targets:
        assert t.startswith(("socket:", "pipe:", "/dev/null", "/memfd:p2pagent-worker")), t


@pytest.mark.parametrize("model", ["demo", "exported", "mlp"])
async def test_answers_through_the_worker_equal_the_daemons_own_engine(
    node: Daemon, in_process: Daemon, certs_dir: Path, model: str
) -> None:
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((rows, demo_model.DEMO_IN), dtype=np.float32) for rows in (1, 5)]
    isolated_ch, isolated = agent_stub(node.address, certs_dir)
    plain_ch, plain = agent_stub(in_process.address, certs_dir)
    async with isolated_ch, plain_ch:
        for x in xs:
            got = await _infer(isolated, model, x)
            want = await _infer(plain, model, x)
            assert got.shape == want.shape == (x.shape[0], 10)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert in_process.worker_pids() == []  # isolation off: no worker at all


async def test_concurrent_batches_in_the_worker_each_get_their_own_answers(
    node: Daemon, models: Path, certs_dir: Path
) -> None:
    """Two batches are in the worker at once (one running, the next waiting in its socket,
    each in its own shared-memory slot): 96 requests of 1 to 5 rows from 24 callers at once,
    every input different, each answered with its own rows."""
    reference = torch.jit.load(str(models / "demo.torchscript.pt"))
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((1 + i % 5, demo_model.DEMO_IN), dtype=np.float32) for i in range(96)]
    ch, stub = agent_stub(node.address, certs_dir)
    async with ch:
        gate = asyncio.Semaphore(24)

        async def one(x: np.ndarray) -> np.ndarray:
            async with gate:
                return await _infer(stub, "demo", x)

        got = await asyncio.gather(*(one(x) for x in xs))
    for x, out in zip(xs, got):
        with torch.no_grad():
            want = reference(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    assert "Traceback" not in node.log_path.read_text()


async def test_a_killed_worker_is_replaced_and_the_next_infer_succeeds(
    node: Daemon, certs_dir: Path
) -> None:
    x = demo_model.sample_input(2).numpy()
    ch, stub = agent_stub(node.address, certs_dir)
    async with ch:
        before = await _infer(stub, "demo", x)
        (old,) = node.worker_pids()
        os.kill(old, signal.SIGKILL)
        after = await _infer(stub, "demo", x)
        np.testing.assert_array_equal(before, after)
        (new,) = node.worker_pids()
        assert new != old
        # While it runs a batch: the batch is tried once more in a new worker (a worker
        # killed from outside costs no request); a second death fails it with UNAVAILABLE.
        spin = asyncio.ensure_future(
            stub.Infer(_request("spin", np.ones((1, 4), "f4")), timeout=120)
        )
        await asyncio.sleep(3.0)  # the model loads and starts spinning
        assert not spin.done()
        os.kill(new, signal.SIGKILL)
        third = await _next_worker(node, new)
        await asyncio.sleep(3.0)  # the retry loads the model again and spins
        assert not spin.done()
        started = time.monotonic()
        os.kill(third, signal.SIGKILL)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await spin
        assert time.monotonic() - started < 15
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        details = err.value.details() or ""
        assert "exited with signal 9" in details and "twice in a row" in details, details
        np.testing.assert_array_equal(await _infer(stub, "demo", x), before)
    assert node.running
    assert "Traceback" not in node.log_path.read_text()


async def test_a_hung_worker_is_stopped_at_its_timeout(node: Daemon, certs_dir: Path) -> None:
    x = demo_model.sample_input(1).numpy()
    ch, stub = agent_stub(node.address, certs_dir)
    async with ch:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Infer(_request("spin", np.ones((1, 4), "f4")), timeout=120)
        assert time.monotonic() - started < 90  # worker_timeout_s is 20 here
        assert err.value.code() == grpc.StatusCode.INTERNAL  # the model's doing: no retry
        assert "did not answer in 20s" in (err.value.details() or "")
        assert "inference.worker_timeout_s" in (err.value.details() or "")
        await _infer(stub, "demo", x)
    assert node.running


@pytest.mark.skipif(os.getuid() != 0, reason="switching uid needs root")
def test_confine_switches_uid_and_keeps_it_from_a_root_only_key(tmp_path: Path) -> None:
    """The uid half of the sandbox, in a process of its own (the daemon's worker stays uid 0
    on hosts where Python lives under a 0700 /root, so the node test cannot show it)."""
    import subprocess
    import sys

    key = tmp_path / "node.key"
    key.write_text("secret")
    key.chmod(0o600)
    tmp_path.chmod(0o755)
    script = (
        "import os, sys\n"
        "from p2pagent.inference import sandbox\n"
        # Landlock allows the key's folder: a refusal can only come from the uid.
        "rules = [sandbox.Rule(os.path.dirname(sys.argv[1]), sandbox.Access.READ)]\n"
        "report = sandbox.confine(rules, 65534, 65534)\n"
        "try:\n"
        "    open(sys.argv[1]).read()\n"
        "    print('opened')\n"
        "except PermissionError:\n"
        "    print('denied', os.getuid(), os.getgid(), os.getgroups(), report.landlock_abi)\n"
        "try:\n"
        "    os.setuid(0)\n"
        "    print('regained root')\n"
        "except PermissionError:\n"
        "    print('stays')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(key)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split("\n")
    words = out[0].split()
    assert words[:4] == ["denied", "65534", "65534", "[]"], out
    assert out[1] == "stays"

"""``p2pagent.client.Client`` against real daemons: every call moves past a node that cannot
be reached, and ``run`` follows its task to the result across a SIGKILL and restart of the
node that took it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from p2pagent._proto import agent_pb2
from p2pagent.client import Client
from p2pagent.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable
from p2pagent.inference import demo_model
from p2pagent.testing.daemon import Daemon, free_port
from tests.integration.demo_node import expected, running, serve_args


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("client-models")
    demo_model.write_all(d)
    return d


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, certs_dir: Path, models: Path
) -> Iterator[Daemon]:
    with running("n7", certs_dir, tmp_path_factory.mktemp("client") / "n7", models) as d:
        yield d


async def test_every_call_moves_past_a_node_that_cannot_be_reached(
    node: Daemon, certs_dir: Path, models: Path
) -> None:
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there: connections are refused
    x = demo_model.sample_input(2, seed=5)
    want = expected(models, x)
    async with Client.from_certs([nobody, node.address], certs_dir, timeout_s=60) as mesh:
        assert (await mesh.status()).name == "n7"
        assert mesh.target == node.address  # the one that answered is asked first from now on
        (out,) = (await mesh.infer("demo", {"input": x})).values()
        assert torch.allclose(out, want, atol=1e-5)
        (out,) = (await mesh.run("demo", {"input": x})).values()
        assert torch.allclose(out, want, atol=1e-5)
        task_id = await mesh.submit("demo", {"input": x})
        (out,) = (await mesh.wait(task_id)).values()
        assert torch.allclose(out, want, atol=1e-5)
        await mesh.put("client-test", "k", b"v", durable=True)
        await mesh.increment("client-test", "c", 3)
        assert list((await mesh.get("client-test", "k")).values) == [b"v"]
        assert (await mesh.get("client-test", "c")).counter == 3
        await mesh.set_add("client-test", "s", [b"a", b"b"])
        await mesh.set_remove("client-test", "s", [b"a"])
        assert list((await mesh.get("client-test", "s")).elements) == [b"b"]
        for i in range(150):  # more than one page of 100
            await mesh.put("client-scan", f"k{i:03d}", b"%d" % i)
        await mesh.delete("client-scan", "k007")
        keys = [key async for key, _ in mesh.scan("client-scan", "k")]
        assert keys == [f"k{i:03d}" for i in range(150) if i != 7]
    async with Client.from_certs([nobody], certs_dir, timeout_s=2) as alone:
        with pytest.raises(Unavailable, match="no node could be reached"):
            await alone.status()


async def test_a_model_published_through_the_client_is_listed_and_runs_by_name(
    node: Daemon, certs_dir: Path, models: Path, tmp_path: Path
) -> None:
    x = demo_model.sample_input(1, seed=13)
    targets = [f"127.0.0.1:{free_port()}", node.address]
    async with Client.from_certs(targets, certs_dir, identity="publisher") as mesh:
        version = await mesh.publish(models / "demo.torchscript.pt", "from-python")
        assert version.name == "from-python" and version.holders == ["n7"]
        listed = await mesh.models("from-python")
        assert [v.manifest_id for v in listed] == [version.manifest_id]
        (out,) = (await mesh.run("from-python", {"input": x})).values()
        assert torch.allclose(out, expected(models, x), atol=1e-5)
        wrong = tmp_path / "weights.safetensors"
        wrong.write_bytes(b"not a safetensors file at all")
        with pytest.raises(InvalidArgument, match="not a safetensors file"):
            await mesh.publish(wrong, "wrong")  # refused before a byte is sent
        assert await mesh.models("wrong") == []


async def test_concurrent_infers_share_one_stream_per_node(
    node: Daemon, certs_dir: Path, models: Path
) -> None:
    xs = [demo_model.sample_input(1, seed=s) for s in range(40)]
    # A bound below the concurrency: the client waits for a slot instead of being refused.
    async with Client(
        [node.address], Client.from_certs([node.address], certs_dir)._material, stream_in_flight=8
    ) as mesh:
        outs = await asyncio.gather(*(mesh.infer("demo", {"input": x}) for x in xs))
        for x, out in zip(xs, outs, strict=True):
            assert torch.allclose(next(iter(out.values())), expected(models, x), atol=1e-5)
        assert len(mesh._streams) == 1  # one stream carried them all
        # One bad call among good ones fails alone; the stream goes on.
        bad = mesh.infer("nope", {"input": xs[0]})
        good = mesh.infer("demo", {"input": xs[1]})
        results = await asyncio.gather(bad, good, return_exceptions=True)
        assert isinstance(results[0], NotFound)
        assert torch.allclose(next(iter(results[1].values())), expected(models, xs[1]), atol=1e-5)  # type: ignore[union-attr]
        # A caller that gives up cancels its request; the stream still serves the next.
        slow = asyncio.create_task(mesh.infer("demo", {"input": demo_model.sample_input(64)}))
        await asyncio.sleep(0)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        (out,) = (await mesh.infer("demo", {"input": xs[2]})).values()
        assert torch.allclose(out, expected(models, xs[2]), atol=1e-5)


async def test_errors_are_raised_as_ours(node: Daemon, certs_dir: Path) -> None:
    x = {"input": demo_model.sample_input(1)}
    async with Client.from_certs([node.address], certs_dir) as mesh:
        with pytest.raises(NotFound, match="'nope' is not served by any node"):
            await mesh.run("nope", x)  # refused at the door: the error, raised
        with pytest.raises(NotFound):
            await mesh.wait("n7-0000000000000000")
        with pytest.raises(InvalidArgument, match="deadline_s"):
            await mesh.submit("demo", x, deadline_s=float("nan"))
    with pytest.raises(InvalidArgument, match="list of node addresses"):
        Client.from_certs(node.address, certs_dir)  # a string, not a list


async def test_run_follows_its_task_across_a_restart_of_the_node_that_took_it(
    tmp_path: Path, certs_dir: Path, models: Path
) -> None:
    d = Daemon("n7", certs_dir, tmp_path / "n7", args=serve_args(models)).start()
    restarter: list[threading.Thread] = []
    try:
        async with Client.from_certs([d.address], certs_dir, follow_s=120) as mesh:
            # A backlog, so that the task is still queued when its node is killed.
            big = {"input": demo_model.sample_input(2048)}
            await asyncio.gather(*(mesh.submit("demo", big) for _ in range(30)))
            x = demo_model.sample_input(1, seed=9)
            events: list[agent_pb2.TaskEvent] = []
            restarted = threading.Event()

            def restart() -> None:
                d.start(timeout=120)  # a loaded 2-core host starts slowly
                restarted.set()

            def on_event(event: agent_pb2.TaskEvent) -> None:
                events.append(event)
                if len(events) == 1:  # acknowledged: the task is journaled at n7
                    d.kill()
                    restarter.append(threading.Thread(target=restart, daemon=True))
                    restarter[0].start()

            outputs = await mesh.run("demo", {"input": x}, on_event=on_event)
            assert restarted.is_set() and events[0].task_id.startswith("n7-")
            assert events[0].kind != agent_pb2.TaskEvent.KIND_DONE  # killed before it ran
            (out,) = outputs.values()
            assert torch.allclose(out, expected(models, x), atol=1e-5)
            # Delivered once: asking again gives the same result.
            (again,) = (await mesh.wait(events[0].task_id)).values()
            assert torch.equal(again, out)
    finally:
        for t in restarter:
            t.join(timeout=90)  # then kill what it started
        d.kill()


async def test_any_rpc_by_name_with_the_same_failover_and_errors(
    node: Daemon, certs_dir: Path
) -> None:
    # What p2pagentctl uses for requests it builds itself (every CLI command goes this way).
    down = f"127.0.0.1:{free_port()}"
    async with Client.from_certs([down, node.address], certs_dir) as mesh:
        members = await mesh.call("Members", agent_pb2.MembersRequest(), repeatable=True)
        assert [m.name for m in members.members] == ["n7"]
        assert mesh.target == node.address  # moved past the node that is down
        with pytest.raises(PermissionDenied, match="needs role publisher"):
            await mesh.call("DeleteModel", agent_pb2.DeleteModelRequest(name="nope"),
                            repeatable=True)  # fmt: skip
        with pytest.raises(InvalidArgument, match=r"answers with a stream: use Client\.stream"):
            await mesh.call("Wait", agent_pb2.WaitRequest(task_id="n7-0"), repeatable=True)
        with pytest.raises(InvalidArgument, match="not an RPC of the Agent service"):
            await mesh.call("Stauts", agent_pb2.StatusRequest(), repeatable=True)
        with pytest.raises(InvalidArgument, match="InferStream takes a stream of requests"):
            await anext(mesh.stream("InferStream", agent_pb2.InferStreamRequest()))
        # A Watch from now: write until the stream, opened concurrently, sees a write.
        changes = mesh.stream("Watch", agent_pb2.WatchRequest(namespace="ns"))
        first = asyncio.ensure_future(anext(changes))
        async with asyncio.timeout(60):
            while not first.done():
                await mesh.put("ns", "k", b"v")
                await asyncio.wait([first], timeout=0.2)
        change = first.result()
        assert (change.key, list(change.value.values)) == ("k", [b"v"])
        await changes.aclose()

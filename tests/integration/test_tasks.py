"""Tasks on one real daemon: Submit returns an id at once, Wait streams the events and ends
with the result (and can be called again), bad input is refused before it is journaled, and
every acknowledged task is delivered exactly once even when the daemon is SIGKILLed with work
still queued."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from p2pagent._proto import agent_pb2, agent_pb2_grpc, common_pb2
from p2pagent.inference import demo_model, tensors
from p2pagent.testing.channels import channel
from p2pagent.testing.daemon import Daemon
from p2pagent.transport.errors import NODE_ANSWER
from tests.integration.demo_node import expected, running, serve_args


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("task-models")
    demo_model.write_all(d)
    return d


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, certs_dir: Path, models: Path
) -> Iterator[Daemon]:
    with running("n8", certs_dir, tmp_path_factory.mktemp("tasks") / "n8", models) as d:
        yield d


def _request(seed: int) -> tuple[agent_pb2.SubmitRequest, torch.Tensor]:
    x = demo_model.sample_input(1, seed=seed)
    req = agent_pb2.SubmitRequest(model="demo", inputs=[tensors.to_proto("input", x)])
    return req, x


def _outputs(event: agent_pb2.TaskEvent) -> list[torch.Tensor]:
    decoded = tensors.many_from_proto(event.outputs, 1 << 20)
    return list(decoded.values()) if isinstance(decoded, dict) else decoded


def _events(stub: agent_pb2_grpc.AgentServiceStub, task_id: str) -> list[agent_pb2.TaskEvent]:
    return [a.event for a in stub.Wait(agent_pb2.WaitRequest(task_id=task_id), timeout=60)]


def test_submit_then_wait_streams_events_and_the_result(
    node: Daemon, certs_dir: Path, models: Path
) -> None:
    with channel(node.address, certs_dir) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        req, x = _request(3)
        task_id = stub.Submit(req, timeout=10).task_id
        assert task_id.startswith("n8-")
        events = _events(stub, task_id)
        kinds = [e.kind for e in events]
        # The state it is in when Wait arrives (if not done yet), each change, the result.
        assert (
            kinds[-1] == agent_pb2.TaskEvent.KIND_DONE
            and kinds.count(agent_pb2.TaskEvent.KIND_DONE) == 1
        )
        assert set(kinds[:-1]) <= {
            agent_pb2.TaskEvent.KIND_QUEUED,
            agent_pb2.TaskEvent.KIND_RUNNING,
        }
        (out,) = _outputs(events[-1])
        assert torch.allclose(out, expected(models, x), atol=1e-5)
        # Wait again, as after a disconnect: the same result.
        again = _events(stub, task_id)
        assert [e.kind for e in again] == [agent_pb2.TaskEvent.KIND_DONE]
        assert again[-1].outputs == events[-1].outputs
        listed = stub.ListTasks(agent_pb2.ListTasksRequest(), timeout=10)
        assert any(t.task_id == task_id and t.state == "done" for t in listed.tasks)
        assert listed.completed >= 1


def test_bad_submissions_are_refused(node: Daemon, certs_dir: Path) -> None:
    with channel(node.address, certs_dir) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        bad = common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[2, 256], data=b"\x00" * 12)
        for req in (
            agent_pb2.SubmitRequest(model="", inputs=[bad]),
            agent_pb2.SubmitRequest(model="demo", inputs=[bad]),  # bytes do not match shape
            agent_pb2.SubmitRequest(model="demo", deadline_s=-1),
            agent_pb2.SubmitRequest(model="demo", deadline_s=float("nan")),
        ):
            with pytest.raises(grpc.RpcError) as e:
                stub.Submit(req, timeout=10)
            assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as e:
            _events(stub, "n8-doesnotexist")
        assert e.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        # The node's own answer, marked so (a client may then tell it from a lost connection).
        trailing = dict(e.value.trailing_metadata())  # type: ignore[attr-defined]
        assert trailing[NODE_ANSWER] == "NOT_FOUND"
        # An unknown model is refused at the door (test_attacks.py checks nothing is journaled).
        with pytest.raises(grpc.RpcError) as e:
            stub.Submit(agent_pb2.SubmitRequest(model="nope", inputs=_request(1)[0].inputs),
                        timeout=10)  # fmt: skip
        assert e.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        assert "'nope'" in e.value.details()  # type: ignore[attr-defined]


def test_acknowledged_tasks_survive_sigkill_and_are_delivered_once(
    tmp_path: Path, certs_dir: Path, models: Path
) -> None:
    d = Daemon("n8", certs_dir, tmp_path / "n8", args=serve_args(models)).start()
    try:
        with channel(d.address, certs_dir) as ch:
            stub = agent_pb2_grpc.AgentServiceStub(ch)
            inputs = {}
            for i in range(150):
                req, x = _request(100 + i)
                inputs[stub.Submit(req, timeout=10).task_id] = x
        d.kill()  # with most of them still queued
        d.start()
        with channel(d.address, certs_dir) as ch:
            stub = agent_pb2_grpc.AgentServiceStub(ch)
            deadline = time.monotonic() + 120
            for task_id, x in inputs.items():
                events = _events(stub, task_id)
                assert time.monotonic() < deadline
                finals = [e for e in events if e.kind in (
                    agent_pb2.TaskEvent.KIND_DONE, agent_pb2.TaskEvent.KIND_FAILED)]  # fmt: skip
                assert len(finals) == 1 and finals[0].kind == agent_pb2.TaskEvent.KIND_DONE, finals
                (out,) = _outputs(finals[0])
                assert torch.allclose(out, expected(models, x), atol=1e-5)
    finally:
        d.kill()


def test_results_are_forgotten_after_the_retention_period(
    tmp_path: Path, certs_dir: Path, models: Path
) -> None:
    env = {"P2PAGENT_TASKS__DONE_RETENTION_S": "1"}
    d = Daemon("n8", certs_dir, tmp_path / "n8", args=serve_args(models), env=env).start()
    try:
        with channel(d.address, certs_dir) as ch:
            stub = agent_pb2_grpc.AgentServiceStub(ch)
            task_id = stub.Submit(_request(7)[0], timeout=10).task_id
            assert _events(stub, task_id)[-1].kind == agent_pb2.TaskEvent.KIND_DONE
            deadline = time.monotonic() + 30
            while True:  # forgotten within a few purge rounds (every retention / 2)
                try:
                    _events(stub, task_id)
                except grpc.RpcError as e:
                    assert e.code() is grpc.StatusCode.NOT_FOUND, e  # type: ignore[attr-defined]
                    break
                assert time.monotonic() < deadline, "the result was never forgotten"
                time.sleep(0.2)
        d.kill()
        d.start()  # and gone from the journal too: a restart does not bring it back
        with channel(d.address, certs_dir) as ch, pytest.raises(grpc.RpcError) as e:
            _events(agent_pb2_grpc.AgentServiceStub(ch), task_id)
        assert e.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    finally:
        d.kill()


def test_cli_submit_wait_and_ls(node: Daemon, certs_dir: Path, models: Path) -> None:
    import json
    import subprocess
    import sys

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "p2pagent.cli.ctl", "tasks", *args,
             "--target", node.address, "--certs", str(certs_dir)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    r = ctl("submit", "--model", "demo", "--input", str(models / "sample_input.json"),
            "--count", "3", "--wait", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert len(doc["task_ids"]) == 3
    assert [res["event"] for res in doc["results"]] == ["done"] * 3
    r = ctl("wait", doc["task_ids"][0], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["event"] == "done", r.stderr
    r = ctl("ls", "--json")
    assert r.returncode == 0, r.stderr
    listed = {t["task_id"]: t for t in json.loads(r.stdout)["tasks"]}
    assert all(listed[t]["state"] == "done" and listed[t]["model"] == "demo"
               for t in doc["task_ids"])  # fmt: skip
    r = ctl("wait", "n8-unknown")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "n8-unknown" in r.stderr


def test_submit_and_wait_follows_the_task_on_one_stream(
    node: Daemon, certs_dir: Path, models: Path
) -> None:
    with channel(node.address, certs_dir) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        req, x = _request(11)
        # SubmitAndWaitRequest has SubmitRequest's fields, numbered alike.
        stream = agent_pb2.SubmitAndWaitRequest.FromString(req.SerializeToString())
        events = [a.event for a in stub.SubmitAndWait(stream, timeout=60)]
        task_id = events[0].task_id
        assert task_id.startswith("n8-") and {e.task_id for e in events} == {task_id}
        kinds = [e.kind for e in events]
        assert (
            kinds[-1] == agent_pb2.TaskEvent.KIND_DONE
            and kinds.count(agent_pb2.TaskEvent.KIND_DONE) == 1
        )
        assert set(kinds[:-1]) <= {
            agent_pb2.TaskEvent.KIND_QUEUED,
            agent_pb2.TaskEvent.KIND_RUNNING,
        }
        (out,) = _outputs(events[-1])
        assert torch.allclose(out, expected(models, x), atol=1e-5)
        # It was journaled like any submitted task: Wait by its id gives the same result.
        assert _events(stub, task_id)[-1].outputs == events[-1].outputs
        # Bad input is refused before anything is journaled or streamed.
        bad = agent_pb2.SubmitAndWaitRequest(model="demo", deadline_s=-1)
        with pytest.raises(grpc.RpcError) as e:
            list(stub.SubmitAndWait(bad, timeout=10))
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        unknown = agent_pb2.SubmitAndWaitRequest(model="nope", inputs=req.inputs)
        with pytest.raises(grpc.RpcError) as e:
            list(stub.SubmitAndWait(unknown, timeout=10))
        assert e.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def test_a_submit_and_wait_run_at_once_survives_sigkill(
    tmp_path: Path, certs_dir: Path, models: Path
) -> None:
    """A short SubmitAndWait (run in the call once the engine has measured the model: its
    one event is its result) was journaled, submission and result, before that event was
    sent: SIGKILL and a restart keep it for Wait."""
    d = Daemon("n7", certs_dir, tmp_path / "n7", args=serve_args(models)).start()
    try:
        with channel(d.address, certs_dir) as ch:
            stub = agent_pb2_grpc.AgentServiceStub(ch)
            req, x = _request(31)
            stream = agent_pb2.SubmitAndWaitRequest.FromString(req.SerializeToString())
            for _ in range(50):  # until the engine has measured the model: then it is short
                events = [a.event for a in stub.SubmitAndWait(stream, timeout=60)]
                if len(events) == 1:
                    break
            assert [e.kind for e in events] == [agent_pb2.TaskEvent.KIND_DONE]
        d.kill()
        d.start(timeout=120)
        with channel(d.address, certs_dir) as ch:
            waited = _events(agent_pb2_grpc.AgentServiceStub(ch), events[0].task_id)
        assert [e.kind for e in waited] == [agent_pb2.TaskEvent.KIND_DONE]
        assert waited[0].outputs == events[0].outputs
        (out,) = _outputs(waited[0])
        assert torch.allclose(out, expected(models, x), atol=1e-5)
    finally:
        d.kill()


def test_cli_wait_keeps_asking_while_the_node_that_took_the_task_restarts(
    tmp_path: Path, certs_dir: Path, models: Path
) -> None:
    import json
    import subprocess
    import sys

    d = Daemon("n8", certs_dir, tmp_path / "n8", args=serve_args(models)).start()
    waiter: subprocess.Popen[str] | None = None
    try:
        with channel(d.address, certs_dir) as ch:
            task_id = (
                agent_pb2_grpc.AgentServiceStub(ch).Submit(_request(21)[0], timeout=10).task_id
            )
        d.kill()
        waiter = subprocess.Popen(
            [sys.executable, "-m", "p2pagent.cli.ctl", "tasks", "wait", task_id, "--json",
             "--target", d.address, "--certs", str(certs_dir), "--follow", "120"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(2.0)  # it asks while no node answers
        assert waiter.poll() is None, waiter.communicate()
        d.start(timeout=120)
        out, err = waiter.communicate(timeout=150)
        assert waiter.returncode == 0, err
        doc = json.loads(out)
        assert doc["task_id"] == task_id and doc["event"] == "done"
    finally:
        if waiter is not None and waiter.poll() is None:
            waiter.kill()
            waiter.wait()
        d.kill()

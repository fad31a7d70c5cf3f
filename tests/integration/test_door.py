"""Work that cannot run is refused at the door, and a compromised node cannot make this one
decode or allocate more than a bound (issue 21, items 7 and 8), against one real daemon:
unknown models, oversized payloads, per-identity quotas and rate limits, oversized Peer
messages, tensors that declare more than they carry, and a 1 MiB task id."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import msgpack  # type: ignore[import-untyped]
import numpy as np
import pytest

from p2pagent._proto import agent_pb2, agent_pb2_grpc, common_pb2, peer_pb2, peer_pb2_grpc
from p2pagent.client import Client
from p2pagent.errors import ResourceExhausted
from p2pagent.inference import demo_model
from p2pagent.testing.channels import channel
from p2pagent.testing.daemon import Daemon
from p2pagent.transport.errors import RETRY_AFTER

#: Small bounds, so that the tests send little: 64 KiB of inputs a task, 2 unfinished tasks
#: per identity, 20 requests/s per identity (bursts of 40).
MAX_PAYLOAD = 64 * 1024
RATE = 20
#: Submissions per second per identity (bursts of twice as many).
SUBMIT_RATE = 5
#: Most bytes of outputs a task result may carry (tasks.max_result_bytes).
MAX_RESULT = 64 * 1024


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    # Holds the engine 3 s a batch without using the CPU: its tasks stay unfinished that long.
    demo_model.write_busy(d, "busy", {"features": 4, "ms_per_row": 0, "ms_per_batch": 3000})
    return d


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, certs_dir: Path, models: Path
) -> Iterator[Daemon]:
    d = Daemon(
        "n5",
        certs_dir,
        tmp_path_factory.mktemp("door") / "n5",
        args=["--serve", f"busy={models / 'busy.safetensors'}", "--rate-limit", str(RATE)],
        env={
            "P2PAGENT_TASKS__MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD),
            "P2PAGENT_TASKS__MAX_QUEUED_PER_IDENTITY": "2",
            "P2PAGENT_TASKS__SUBMIT_RATE_PER_IDENTITY": str(SUBMIT_RATE),
            "P2PAGENT_TASKS__MAX_RESULT_BYTES": str(MAX_RESULT),
        },
    ).start(timeout=120)
    try:
        yield d
    finally:
        d.kill()


def _x(rows: int = 1) -> common_pb2.Tensor:
    data = np.zeros((rows, 4), "<f4").tobytes()
    return common_pb2.Tensor(
        name="input", dtype=common_pb2.DTYPE_FLOAT32, shape=[rows, 4], data=data
    )


def _journaled(node: Daemon) -> int:
    """Tasks in the node's journal, read beside the running daemon (SQLite WAL)."""
    with sqlite3.connect(f"file:{node.data / 'tasks.db'}?mode=ro", uri=True) as db:
        (n,) = db.execute("SELECT count(*) FROM tasks").fetchone()
        return int(n)


def _refused(call: object, *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        result = call(*args, timeout=20)  # type: ignore[operator]
        if not isinstance(result, agent_pb2.SubmitResponse | peer_pb2.AssignResponse):
            list(result)  # a stream: the refusal comes when it is read
    return e.value


def _submit_and_wait(stub: agent_pb2_grpc.AgentServiceStub) -> object:
    """SubmitAndWait taking a SubmitRequest (its request has the same fields, numbered alike)."""

    def call(request: agent_pb2.SubmitRequest, timeout: float) -> object:
        same = agent_pb2.SubmitAndWaitRequest.FromString(request.SerializeToString())
        return stub.SubmitAndWait(same, timeout=timeout)

    return call


def _rss_mb(node: Daemon) -> float:
    assert node.proc is not None
    status = Path(f"/proc/{node.proc.pid}/status").read_text()
    (line,) = [x for x in status.splitlines() if x.startswith("VmRSS:")]
    return int(line.split()[1]) / 1024


def test_unknown_or_malformed_models_are_refused_at_once_and_never_journaled(
    node: Daemon, certs_dir: Path
) -> None:
    with channel(node.address, certs_dir) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        before = _journaled(node)
        for call in (stub.Submit, _submit_and_wait(stub)):
            e = _refused(call, agent_pb2.SubmitRequest(model="nope", inputs=[_x()]))
            assert e.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
            assert "'nope' is not served by any node" in e.details()  # type: ignore[attr-defined]
            e = _refused(call, agent_pb2.SubmitRequest(model="../../etc/passwd", inputs=[_x()]))
            assert e.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            assert "path separator" in e.details()  # type: ignore[attr-defined]
        e = _refused(stub.Infer, agent_pb2.InferRequest(model="nope", inputs=[_x()]))
        assert e.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        assert _journaled(node) == before
        with sqlite3.connect(f"file:{node.data / 'tasks.db'}?mode=ro", uri=True) as db:
            models = {m for (m,) in db.execute("SELECT model FROM tasks")}
        assert not models & {"nope", "../../etc/passwd"}


def test_inputs_that_contradict_the_model_or_a_missing_version_are_refused_at_once(
    node: Daemon, certs_dir: Path
) -> None:
    wrong_dtype = common_pb2.Tensor(
        name="input", dtype=common_pb2.DTYPE_INT32, shape=[1, 4], data=bytes(16)
    )
    wrong_shape = common_pb2.Tensor(
        name="input", dtype=common_pb2.DTYPE_FLOAT32, shape=[1, 5], data=bytes(20)
    )
    unnamed = [common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[1, 4], data=bytes(16))] * 2
    cases = [
        ([wrong_dtype], "", grpc.StatusCode.INVALID_ARGUMENT, "expects dtype float32"),
        ([wrong_shape], "", grpc.StatusCode.INVALID_ARGUMENT, "expects shape [-1, 4]"),
        (unnamed, "", grpc.StatusCode.INVALID_ARGUMENT, "takes 1 input(s)"),
        ([_x()], "0123456789ab", grpc.StatusCode.INVALID_ARGUMENT, "no versions to pin"),
    ]
    with channel(node.address, certs_dir) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        before = _journaled(node)
        for inputs, version, code, words in cases:
            request = agent_pb2.SubmitRequest(model="busy", inputs=inputs, model_version=version)
            for call in (stub.Submit, _submit_and_wait(stub)):
                e = _refused(call, request)
                assert e.code() is code, e  # type: ignore[attr-defined]
                assert words in e.details()  # type: ignore[attr-defined]
            infer = agent_pb2.InferRequest(model="busy", inputs=inputs, model_version=version)
            e = _refused(stub.Infer, infer)
            assert e.code() is code and words in e.details()  # type: ignore[attr-defined]
        e = _refused(
            stub.Submit, agent_pb2.SubmitRequest(model="nope", inputs=[_x()], model_version="ab")
        )
        assert e.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        assert _journaled(node) == before


def test_a_submit_of_many_tiny_tensors_is_refused_by_count_before_decoding(
    node: Daemon, certs_dir: Path
) -> None:
    tiny = common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[1], data=bytes(4))
    many = agent_pb2.SubmitRequest(model="busy", inputs=[tiny] * 5000)  # ~60 KiB: under the bound
    with channel(node.address, certs_dir) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        before = _journaled(node)
        for call in (stub.Submit, _submit_and_wait(stub)):
            e = _refused(call, many)
            assert e.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            assert "more than 1024 input tensors" in e.details()  # type: ignore[attr-defined]
        assert _journaled(node) == before


def test_a_payload_over_the_bound_is_refused_naming_the_knob(node: Daemon, certs_dir: Path) -> None:
    rows = MAX_PAYLOAD // 16 + 1  # 4 float32 a row: just over the bound
    just_over = agent_pb2.SubmitRequest(model="busy", inputs=[_x(rows)])
    far_over = agent_pb2.SubmitRequest(model="busy", inputs=[_x(rows * 4)])  # refused undecoded
    with channel(node.address, certs_dir) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        before = _journaled(node)
        for request in (just_over, far_over):
            e = _refused(stub.Submit, request)
            assert e.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            assert "tasks.max_payload_bytes" in e.details()  # type: ignore[attr-defined]
        infer = agent_pb2.InferRequest(model="busy", inputs=[_x(rows * 4)])
        e = _refused(stub.Infer, infer)
        assert "tasks.max_payload_bytes" in e.details()  # type: ignore[attr-defined]
        assert _journaled(node) == before


def test_unfinished_tasks_per_identity_have_a_quota(node: Daemon, certs_dir: Path) -> None:
    request = agent_pb2.SubmitRequest(model="busy", inputs=[_x()])
    with channel(node.address, certs_dir) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        # Each task holds the engine 3 s, so two are unfinished when the third comes.
        ids = [stub.Submit(request, timeout=20).task_id for _ in range(2)]
        e = _refused(stub.Submit, request)
        assert e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "tasks.max_queued_per_identity" in e.details()  # type: ignore[attr-defined]
        hint = dict(e.trailing_metadata())[RETRY_AFTER]  # type: ignore[attr-defined]
        assert int(hint) > 0
        # Another identity is not held to this one's quota.
        with channel(node.address, certs_dir, "admin") as other:
            agent_pb2_grpc.AgentServiceStub(other).Submit(request, timeout=20)
        # Once the results are delivered, the identity may submit again.
        for task_id in ids:
            *_, last = stub.Wait(agent_pb2.WaitRequest(task_id=task_id), timeout=60)
            assert last.event.kind == agent_pb2.TaskEvent.KIND_DONE
        assert stub.Submit(request, timeout=20).task_id


async def test_the_rate_limit_refuses_with_a_retry_after_hint(
    node: Daemon, certs_dir: Path
) -> None:
    async with Client.from_certs([node.address], certs_dir, identity="publisher") as mesh:
        hint = None
        for _ in range(4 * RATE):
            try:
                await mesh.status()
            except ResourceExhausted as e:
                assert "rate_limit" in str(e)
                hint = e.retry_after_s
                break
        assert hint is not None and 0 < hint <= 1.5 / RATE
        await asyncio.sleep(hint)
        await mesh.status()  # served again once the hint's time has passed


def test_submissions_per_identity_are_rate_limited_with_a_retry_after_hint(
    node: Daemon, certs_dir: Path
) -> None:
    request = agent_pb2.SubmitRequest(model="busy", inputs=[_x()])
    with channel(node.address, certs_dir, "admin") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        refusals = []
        for _ in range(4 * SUBMIT_RATE):  # the burst is 2 * SUBMIT_RATE
            try:
                stub.Submit(request, timeout=20)
            except grpc.RpcError as e:
                assert e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
                refusals.append(e)
                if "submit_rate_per_identity" in e.details():  # type: ignore[attr-defined]
                    break
        else:
            pytest.fail([e.details() for e in refusals])  # type: ignore[attr-defined]
    hint = int(dict(refusals[-1].trailing_metadata())[RETRY_AFTER])  # type: ignore[attr-defined]
    assert 0 < hint <= 1000 // SUBMIT_RATE + 1


def _peer(node: Daemon, certs_dir: Path) -> grpc.Channel:
    return channel(node.address, certs_dir, "n1")  # a node certificate: a compromised node


def _delta_message(sender: str, n: int) -> bytes:
    """A state delta message from ``sender`` with ``n`` empty deltas: one byte each, the
    cheapest bytes to send and the dearest to decode (a list and a slice apiece)."""
    head = msgpack.packb([1, "d", sender], use_bin_type=True)[1:]  # without its array header
    return b"\x94" + head + b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n


def test_oversized_peer_messages_are_refused_before_decoding(node: Daemon, certs_dir: Path) -> None:
    payload = common_pb2.Envelope(version=1, payload=_delta_message("n1", 8_000_000))
    rss_before = _rss_mb(node)
    with _peer(node, certs_dir) as ch:
        stub = peer_pb2_grpc.PeerServiceStub(ch)
        for call, setting in (
            (stub.Replicate, "state.max_message_bytes"),
            (stub.Gossip, "MAX_GOSSIP_BYTES"),
            (stub.Load, "MAX_REPORT_BYTES"),
        ):
            for _ in range(3):
                e = _refused(call, payload)
                assert e.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
                assert setting in e.details()  # type: ignore[attr-defined]
        big_task = peer_pb2.TaskSpec(
            task_id="n1-0123456789abcdef", origin="n1", model="busy", inputs=[_x(100_000)]
        )
        e = _refused(stub.Assign, peer_pb2.AssignRequest(task=big_task))
        assert "tasks.max_payload_bytes" in e.details()  # type: ignore[attr-defined]
        big_result = peer_pb2.CompleteRequest(
            task_id="n5-0123456789abcdef", executor="n1", ok=True, outputs=[_x(MAX_RESULT // 8)]
        )
        tiny = common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[1], data=bytes(4))
        many = peer_pb2.CompleteRequest(
            task_id="n5-0123456789abcdef", executor="n1", ok=True, outputs=[tiny] * 2000
        )
        for request, words in ((big_result, "tasks.max_result_bytes"), (many, "output tensors")):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Complete(request, timeout=20)
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            assert words in refused.value.details()  # type: ignore[attr-defined]
    # Decoded, 8 MB of such msgpack cost this daemon +557 MB; refused undecoded it costs
    # about its own size while it is received (a generous bound on a shared machine).
    assert _rss_mb(node) - rss_before < 100
    _alive(node, certs_dir)


def test_an_assigned_tensor_declaring_more_than_its_bytes_is_invalid(
    node: Daemon, certs_dir: Path
) -> None:
    huge = common_pb2.Tensor(name="input", dtype=common_pb2.DTYPE_UINT8, shape=[2**31, 2**31],
                             data=b"\x01")  # fmt: skip
    spec = peer_pb2.TaskSpec(
        task_id="n1-0123456789abcdef", origin="n1", model="busy", inputs=[huge]
    )
    with _peer(node, certs_dir) as ch:
        e = _refused(peer_pb2_grpc.PeerServiceStub(ch).Assign, peer_pb2.AssignRequest(task=spec))
    assert e.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "received 1" in e.details()  # type: ignore[attr-defined]
    _alive(node, certs_dir)


def test_a_huge_task_id_is_not_found_quoting_a_short_prefix(node: Daemon, certs_dir: Path) -> None:
    for task_id in ("x" * (1 << 20), "n5-" + "y" * (1 << 20)):
        with channel(node.address, certs_dir) as ch:
            e = _refused(
                agent_pb2_grpc.AgentServiceStub(ch).Wait, agent_pb2.WaitRequest(task_id=task_id)
            )
        assert e.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        details = e.details()  # type: ignore[attr-defined]
        assert len(details) < 400 and str(len(task_id)) in details


def _alive(node: Daemon, certs_dir: Path) -> None:
    deadline = time.monotonic() + 30
    with channel(node.address, certs_dir, "admin") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        while True:
            try:
                assert stub.Status(agent_pb2.StatusRequest(), timeout=10).name == "n5"
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    assert node.running and "Traceback" not in node.log_tail(500)

"""Agent.InferStream and Agent.SubmitStream end to end against a real daemon: answers in
order of completion, per-request deadlines, errors and cancellation, the in-flight bound, and
every bad input of the issue answered alone while the stream goes on."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from p2pagent._proto import agent_pb2, agent_pb2_grpc, common_pb2
from p2pagent.inference import demo_model
from p2pagent.testing.channels import aio_channel
from p2pagent.testing.daemon import Daemon

LIMIT = 4  # transport.stream_max_in_flight of the daemon under test


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[Daemon]:
    models = tmp_path_factory.mktemp("models")
    demo_model.write_all(models)
    # Holds the engine 400 ms a batch without using the CPU: a request behind it must wait.
    demo_model.write_busy(models, "busy", {"features": 4, "ms_per_row": 0, "ms_per_batch": 400})
    serve = [
        f"demo={models / 'demo.torchscript.pt'}",
        f"noop={models / 'noop.torchscript.pt'}",
        f"busy={models / 'busy.safetensors'}",
    ]
    args = [a for s in serve for a in ("--serve", s)]
    env = {"P2PAGENT_TRANSPORT__STREAM_MAX_IN_FLIGHT": str(LIMIT)}
    d = Daemon("n3", certs_dir, tmp_path_factory.mktemp("data") / "n3", args=args, env=env)
    d.start()
    try:
        yield d
    finally:
        d.kill()


def _tensor(arr: np.ndarray) -> common_pb2.Tensor:
    return common_pb2.Tensor(
        name="input",
        dtype=common_pb2.DTYPE_FLOAT32,
        shape=list(arr.shape),
        data=arr.astype("<f4").tobytes(),
    )


def infer(
    request_id: int, model: str = "demo", rows: int = 1, **kw: object
) -> agent_pb2.InferStreamRequest:
    width = 4 if model == "busy" else demo_model.DEMO_IN
    x = np.full((rows, width), float(request_id), dtype=np.float32)
    return agent_pb2.InferStreamRequest(
        request_id=request_id,
        model=model,
        inputs=[_tensor(x)],
        **kw,  # type: ignore[arg-type]
    )


async def _answers(
    call: AsyncIterator[agent_pb2.InferStreamResponse], n: int
) -> list[agent_pb2.InferStreamResponse]:
    out = []
    async for answer in call:
        out.append(answer)
        if len(out) == n:
            break
    return out


def test_answers_in_order_of_completion_with_per_request_errors(
    node: Daemon, certs_dir: Path
) -> None:
    async def go() -> None:
        async with aio_channel(node.address, certs_dir) as ch:
            call = agent_pb2_grpc.AgentServiceStub(ch).InferStream()
            await call.write(infer(1, "busy"))
            # A malformed one among good ones: data that does not fit its shape.
            bad = infer(3)
            bad.inputs[0].shape[:] = [1, 7]
            await call.write(bad)
            await call.write(infer(4, "no-such-model"))
            await call.write(infer(5, "busy", timeout_s=0.05))  # its own deadline
            # Answered as each completes: the refusals and the deadline do not wait for busy.
            first = await _answers(call, 3)
            assert {a.request_id for a in first} == {3, 4, 5}
            await call.write(infer(2))
            await call.write(infer(6))
            await call.done_writing()
            answers = first + [a async for a in call]
            assert await call.code() is grpc.StatusCode.OK  # half-closed: ends once answered
            by_id = {a.request_id: a for a in answers}
            assert sorted(by_id) == [1, 2, 3, 4, 5, 6]
            for ok in (1, 2, 6):
                assert by_id[ok].error_code == "", by_id[ok]
                assert by_id[ok].outputs
            assert by_id[3].error_code == "INVALID_ARGUMENT"
            assert by_id[4].error_code == "NOT_FOUND"
            assert by_id[5].error_code == "DEADLINE_EXCEEDED"
            # The demo answers are the model's for their own input.
            out = np.frombuffer(by_id[2].outputs[0].data, "<f4")
            other = np.frombuffer(by_id[6].outputs[0].data, "<f4")
            assert not np.array_equal(out, other)

    asyncio.run(go())


def test_cancel_reused_id_and_in_flight_bound(node: Daemon, certs_dir: Path) -> None:
    async def go() -> None:
        async with aio_channel(node.address, certs_dir) as ch:
            call = agent_pb2_grpc.AgentServiceStub(ch).InferStream()
            for i in range(1, LIMIT + 1):
                await call.write(infer(i, "busy"))
            await call.write(infer(1))  # id 1 is still in flight
            await call.write(infer(99))  # one more than allowed
            await call.write(agent_pb2.InferStreamRequest(request_id=2, cancel=True))
            first = await _answers(call, 3)
            assert {a.request_id: a.error_code for a in first} == {
                1: "INVALID_ARGUMENT",
                99: "RESOURCE_EXHAUSTED",
                2: "CANCELLED",
            }
            reused = next(a for a in first if a.request_id == 1)
            assert "already in flight" in reused.error_message
            bound = next(a for a in first if a.request_id == 99)
            assert "transport.stream_max_in_flight" in bound.error_message
            # The cancelled slot is free again: a new request runs.
            await call.write(infer(50))
            await call.done_writing()
            rest = [a async for a in call]
            assert sorted(a.request_id for a in rest) == [1, 3, 4, 50]
            assert all(a.error_code == "" for a in rest), rest
            assert await call.code() is grpc.StatusCode.OK

    asyncio.run(go())


def test_undecodable_message_is_answered_under_its_id(node: Daemon, certs_dir: Path) -> None:
    async def go() -> None:
        async with aio_channel(node.address, certs_dir) as ch:
            raw = ch.stream_stream(
                "/p2pagent.v1.AgentService/InferStream",
                request_serializer=lambda b: b,
                response_deserializer=agent_pb2.InferStreamResponse.FromString,
            )
            call = raw()
            # field 5 (request_id) = 9, then field 2 (inputs) whose bytes are not a Tensor.
            await call.write(bytes([5 << 3, 9, (2 << 3) | 2, 3, 0xFF, 0xFF, 0xFF]))
            await call.write(infer(10).SerializeToString())
            await call.done_writing()
            answers = {a.request_id: a for a in [a async for a in call]}
            assert answers[9].error_code == "INVALID_ARGUMENT"
            assert "not a valid" in answers[9].error_message
            assert answers[10].error_code == ""
            assert await call.code() is grpc.StatusCode.OK

    asyncio.run(go())


def test_client_that_stops_reading_is_ended(node: Daemon, certs_dir: Path) -> None:
    async def go() -> None:
        async with aio_channel(node.address, certs_dir) as ch:
            call = agent_pb2_grpc.AgentServiceStub(ch).InferStream()
            # 1 MiB answers, never read while sending: the node holds LIMIT answers and LIMIT
            # refusals, then ends the stream rather than hold more.
            sent = 0
            try:
                for i in range(1, 41):
                    await asyncio.wait_for(call.write(infer(i, "noop", rows=1024)), 30)
                    sent += 1
            except Exception:
                # The node ended the call (and cut the connection a moment later) while this
                # client still wrote: grpc reports the failed write, not the node's status.
                assert sent > LIMIT
                return
            await asyncio.sleep(2)
            read = 0
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                async for _ in call:
                    read += 1
            # The node ends the call, then cuts the connection a moment later: a client
            # that reads only after the cut sees the lost connection, not the status.
            code, details = ended.value.code(), ended.value.details() or ""
            if code is grpc.StatusCode.UNAVAILABLE:
                assert "Socket closed" in details or "Connection reset" in details, details
            else:
                assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
                assert "without reading" in details
            assert read <= 2 * LIMIT  # what it held for this client, at most

    asyncio.run(go())


def test_submit_stream_acknowledges_then_answers(node: Daemon, certs_dir: Path) -> None:
    async def go() -> None:
        async with aio_channel(node.address, certs_dir) as ch:
            call = agent_pb2_grpc.AgentServiceStub(ch).SubmitStream()
            x = np.ones((1, demo_model.DEMO_IN), dtype=np.float32)
            for i in (1, 2):
                await call.write(
                    agent_pb2.SubmitStreamRequest(request_id=i, model="demo", inputs=[_tensor(x)])
                )
            await call.write(agent_pb2.SubmitStreamRequest(request_id=3, model=""))
            await call.write(agent_pb2.SubmitStreamRequest(request_id=1, model="demo"))
            await call.done_writing()
            answers = [a async for a in call]
            assert await call.code() is grpc.StatusCode.OK
            for i in (1, 2):
                mine = [a for a in answers if a.request_id == i and not a.error_code]
                kinds = [a.event.kind for a in mine]
                assert kinds == [agent_pb2.TaskEvent.KIND_QUEUED, agent_pb2.TaskEvent.KIND_DONE], (
                    mine
                )
                assert mine[0].event.task_id and mine[0].event.task_id == mine[1].event.task_id
                assert mine[1].event.outputs
            errors = {a.request_id: a.error_code for a in answers if a.error_code}
            assert errors == {3: "INVALID_ARGUMENT", 1: "INVALID_ARGUMENT"}
            # The acknowledged id is a real task: Wait finds its result.
            task_id = next(a.event.task_id for a in answers if a.request_id == 2)
            events = [
                a.event
                async for a in agent_pb2_grpc.AgentServiceStub(ch).Wait(
                    agent_pb2.WaitRequest(task_id=task_id)
                )
            ]
            assert events[-1].kind == agent_pb2.TaskEvent.KIND_DONE

    asyncio.run(go())


def _journal_writer(node: Daemon) -> int:
    """The pid of the daemon's task journal writer (a child process)."""
    assert node.proc is not None
    pid = node.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in children:
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"journal_writer" in cmdline:
            return int(child)
    raise AssertionError(f"no journal writer among the children {children} of {pid}")


def test_submit_stream_cancel_before_journaled_reaches_the_task(
    node: Daemon, certs_dir: Path
) -> None:
    """The writer is stopped, so the submission cannot be journaled when the cancel comes:
    the client does not know the id yet. The cancel fails the task (it was running on the
    busy model) and, once the submission is durable, the client gets the id and the failure,
    which Wait also finds."""

    async def go() -> None:
        writer = _journal_writer(node)
        async with aio_channel(node.address, certs_dir) as ch:
            stub = agent_pb2_grpc.AgentServiceStub(ch)
            call = stub.SubmitStream()
            x = np.ones((1, 4), dtype=np.float32)
            os.kill(writer, signal.SIGSTOP)
            try:
                request = agent_pb2.SubmitStreamRequest(
                    request_id=1, model="busy", inputs=[_tensor(x)]
                )
                await call.write(request)
                await asyncio.sleep(0.2)  # admitted and queued (running), not journaled
                await call.write(agent_pb2.SubmitStreamRequest(request_id=1, cancel=True))
                await asyncio.sleep(0.2)
            finally:
                os.kill(writer, signal.SIGCONT)
            await call.done_writing()
            answers = [a async for a in call]
            assert await call.code() is grpc.StatusCode.OK
            assert [a.request_id for a in answers] == [1, 1], answers
            queued, final = (a.event for a in answers)
            assert queued.kind == agent_pb2.TaskEvent.KIND_QUEUED and queued.task_id
            assert final.task_id == queued.task_id
            assert (final.kind, final.error_code) == (
                agent_pb2.TaskEvent.KIND_FAILED,
                "CANCELLED",
            ), final
            waited = [
                a.event async for a in stub.Wait(agent_pb2.WaitRequest(task_id=final.task_id))
            ]
            assert (waited[-1].kind, waited[-1].error_code) == (
                agent_pb2.TaskEvent.KIND_FAILED,
                "CANCELLED",
            )

    asyncio.run(go())

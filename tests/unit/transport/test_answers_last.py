"""A server-streaming method whose behaviour returns its last message (``answers_last``): a
real grpc.aio server behind the guard, with mutual TLS. The client reads an ordinary server
stream; messages written before the last arrive as they are written, not held back; errors
are answered with their status; the call is registered as an open stream while it runs, so a
revocation ends it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from p2pagent import errors
from p2pagent._proto import agent_pb2
from p2pagent.testing.channels import aio_channel
from p2pagent.testing.daemon import free_port
from p2pagent.transport.guard import Guard, GuardedHandlers, answers_last, stream_writer

WAIT = "/p2pagent.v1.AgentService/Wait"


def _event(task_id: str, kind: int) -> agent_pb2.WaitResponse:
    return agent_pb2.WaitResponse(event=agent_pb2.TaskEvent(task_id=task_id, kind=kind))


class _Waits:
    """Serves ``Wait``: "queued" is written at once, then the result is returned once the
    test releases it; task id "bad" is refused after its first message."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.first_written = asyncio.Event()

    @answers_last
    async def Wait(self, request: agent_pb2.WaitRequest, context: Any) -> agent_pb2.WaitResponse:
        await stream_writer()(_event(request.task_id, agent_pb2.TaskEvent.KIND_QUEUED))
        self.first_written.set()
        if request.task_id == "bad":
            raise errors.NotFound("no task 'bad'; check the id")
        await self.release.wait()
        return _event(request.task_id, agent_pb2.TaskEvent.KIND_DONE)


class _Handlers(grpc.GenericRpcHandler):
    def __init__(self, waits: _Waits) -> None:
        self.waits = waits

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        if details.method != WAIT:
            return None
        return grpc.unary_stream_rpc_method_handler(
            self.waits.Wait,
            request_deserializer=agent_pb2.WaitRequest.FromString,
            response_serializer=agent_pb2.WaitResponse.SerializeToString,
        )


async def _serve(certs_dir: Path, guard: Guard, waits: _Waits) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((GuardedHandlers(_Handlers(waits), guard),))
    creds = grpc.ssl_server_credentials(
        [((certs_dir / "n1.key").read_bytes(), (certs_dir / "n1.crt").read_bytes())],
        (certs_dir / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    address = f"127.0.0.1:{free_port()}"
    server.add_secure_port(address, creds)
    await server.start()
    return server, address


def _wait_stub(ch: grpc.aio.Channel) -> Any:
    return ch.unary_stream(
        WAIT,
        request_serializer=agent_pb2.WaitRequest.SerializeToString,
        response_deserializer=agent_pb2.WaitResponse.FromString,
    )


async def test_earlier_messages_arrive_as_written_and_the_last_ends_the_stream(
    certs_dir: Path,
) -> None:
    guard, waits = Guard("test"), _Waits()
    server, address = await _serve(certs_dir, guard, waits)
    try:
        async with aio_channel(address, certs_dir) as ch:
            call = _wait_stub(ch)(agent_pb2.WaitRequest(task_id="t1"), timeout=30)
            first = await asyncio.wait_for(call.read(), 10)  # before the behaviour returns
            assert first.event.kind == agent_pb2.TaskEvent.KIND_QUEUED
            assert guard.streams.count("spiffe://test/client/client") == 1  # registered
            waits.release.set()
            last = await asyncio.wait_for(call.read(), 10)
            assert last.event.kind == agent_pb2.TaskEvent.KIND_DONE
            assert await call.read() is grpc.aio.EOF
            assert await call.code() is grpc.StatusCode.OK
            assert guard.streams.total() == 0
            # An error after a message: the message, then the error's status.
            bad = _wait_stub(ch)(agent_pb2.WaitRequest(task_id="bad"), timeout=30)
            assert (await bad.read()).event.task_id == "bad"
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await bad.read()
            assert e.value.code() is grpc.StatusCode.NOT_FOUND
            assert "check the id" in (e.value.details() or "")
    finally:
        await server.stop(None)


async def test_a_revocation_ends_a_call_waiting_for_its_last_message(certs_dir: Path) -> None:
    guard, waits = Guard("test"), _Waits()
    server, address = await _serve(certs_dir, guard, waits)
    try:
        async with aio_channel(address, certs_dir) as ch:
            call = _wait_stub(ch)(agent_pb2.WaitRequest(task_id="t2"), timeout=30)
            await asyncio.wait_for(call.read(), 10)
            await asyncio.wait_for(waits.first_written.wait(), 10)
            assert guard.revoke_streams("spiffe://test/client/client", "key lost") == 1
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await asyncio.wait_for(call.read(), 10)
            assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "revoked: key lost" in (e.value.details() or "")
            assert guard.streams.total() == 0
    finally:
        await server.stop(None)

"""A bare ``Agent.Infer`` echo server: the gRPC + mutual TLS floor under every daemon row.

    python -m bench._grpc_echo CERTS_DIR NODE_NAME ADDRESS

Same stack as the daemon (grpc.aio on uvloop, the node's certificate, client certificates
required) and nothing of p2pagent behind it: ``Infer`` answers with its inputs, and
``InferStream`` answers each request of the stream with its inputs under its id, and
``SubmitAndWait`` answers its one done event with its inputs (a server stream). What a real
daemon does per request beyond this is our cost; this much is the RPC layer's, and no
batching can make a daemon faster than it. Prints "ready" once serving.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import uvloop

from p2pagent._proto import agent_pb2, agent_pb2_grpc


class Echo(agent_pb2_grpc.AgentServiceServicer):
    async def Infer(
        self, request: agent_pb2.InferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.InferResponse:
        return agent_pb2.InferResponse(outputs=list(request.inputs))

    async def InferStream(
        self,
        request_iterator: AsyncIterator[agent_pb2.InferStreamRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[agent_pb2.InferStreamResponse]:
        # The floor of a multiplexed stream: each request answered with its inputs, in turn.
        async for request in request_iterator:
            yield agent_pb2.InferStreamResponse(
                request_id=request.request_id, outputs=list(request.inputs)
            )

    async def SubmitAndWait(
        self, request: agent_pb2.SubmitAndWaitRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[agent_pb2.SubmitAndWaitResponse]:
        # The floor of a one-message server stream: a done event carrying the inputs.
        event = agent_pb2.TaskEvent(
            task_id="echo", kind=agent_pb2.TaskEvent.KIND_DONE, outputs=list(request.inputs)
        )
        yield agent_pb2.SubmitAndWaitResponse(event=event)


async def serve(certs: Path, name: str, address: str) -> None:
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(Echo(), server)
    creds = grpc.ssl_server_credentials(
        [((certs / f"{name}.key").read_bytes(), (certs / f"{name}.crt").read_bytes())],
        (certs / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    server.add_secure_port(address, creds)
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))

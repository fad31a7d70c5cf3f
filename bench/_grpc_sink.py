"""A bare gRPC sink: one client-streaming method that takes byte chunks and answers with their
count, over the same mutual TLS as a daemon. The floor under a parameter-averaging round.

    python -m bench._grpc_sink CERTS_DIR NODE_NAME ADDRESS

Prints "ready" once serving.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import uvloop

METHOD = "/bench.Sink/Take"


async def _take(requests: AsyncIterator[bytes], context: Any) -> bytes:
    total = 0
    async for chunk in requests:
        total += len(chunk)
    return str(total).encode()


async def serve(certs: Path, name: str, address: str) -> None:
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", 64 << 20)],
    )
    handler = grpc.stream_unary_rpc_method_handler(_take)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Sink", {"Take": handler}),)
    )
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

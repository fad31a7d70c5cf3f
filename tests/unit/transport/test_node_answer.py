"""Which failed calls a client may send to another node: the node's own UNAVAILABLE (it
refused the call) carries NODE_ANSWER; a transport failure does not, and only a connection
that was never made proves that nothing was applied."""

from __future__ import annotations

import grpc
import pytest

from p2pagent.transport.errors import NODE_ANSWER, answered_by_node, surely_not_applied


def _error(code: grpc.StatusCode, details: str, *trailing: tuple[str, str]) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


@pytest.mark.parametrize(
    ("error", "not_applied"),
    [
        (_error(grpc.StatusCode.UNAVAILABLE, "journal down", (NODE_ANSWER, "UNAVAILABLE")), True),
        (_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"), True),
        (_error(grpc.StatusCode.UNAVAILABLE, "ipv4:127.0.0.1:1: Connection refused"), True),
        (_error(grpc.StatusCode.UNAVAILABLE, "Stream removed (Socket closed)"), False),
        (_error(grpc.StatusCode.UNAVAILABLE, "Connection reset by peer"), False),
        (_error(grpc.StatusCode.INVALID_ARGUMENT, "bad", (NODE_ANSWER, "INVALID_ARGUMENT")), False),
    ],
)
def test_only_a_refusal_or_a_connection_never_made_proves_nothing_was_applied(
    error: grpc.aio.AioRpcError, not_applied: bool
) -> None:
    assert surely_not_applied(error) is not_applied


def test_answered_by_node_reads_the_trailing_metadata() -> None:
    assert answered_by_node(_error(grpc.StatusCode.NOT_FOUND, "x", (NODE_ANSWER, "NOT_FOUND")))
    assert not answered_by_node(_error(grpc.StatusCode.NOT_FOUND, "x"))

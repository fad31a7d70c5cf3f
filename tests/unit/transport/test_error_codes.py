"""Every error class maps to its gRPC status and back: a node's DataLoss reaches a client as
DATA_LOSS and is raised there as DataLoss again, with the node's message."""

from __future__ import annotations

import grpc
import pytest

from p2pagent import errors
from p2pagent.transport.errors import error_from_rpc, status_of


@pytest.mark.parametrize(
    "cls",
    [
        errors.InvalidArgument,
        errors.NotFound,
        errors.AlreadyExists,
        errors.FailedPrecondition,
        errors.ResourceExhausted,
        errors.DeadlineExceeded,
        errors.Unavailable,
        errors.PermissionDenied,
        errors.DataLoss,
        errors.Internal,
    ],
)
def test_each_error_round_trips_through_its_status(cls: type[errors.P2PAgentError]) -> None:
    status = status_of(cls("what went wrong"))
    assert status.name == cls.code
    rpc = grpc.aio.AioRpcError(status, grpc.aio.Metadata(), grpc.aio.Metadata(), "the reason")
    back = error_from_rpc(rpc)
    assert type(back) is cls
    assert "the reason" in str(back)

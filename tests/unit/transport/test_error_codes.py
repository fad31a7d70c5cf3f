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


def test_the_code_table_is_derived_from_the_classes() -> None:
    """Every code an error class carries has its canonical class in ``errors.BY_CODE``, and
    every table entry is a gRPC status; a failed task's code comes back as the same class."""
    from p2pagent.tasks.wire import error_code, error_from_code

    def tree(cls: type[errors.P2PAgentError]) -> list[type[errors.P2PAgentError]]:
        return [s for sub in cls.__subclasses__() for s in (sub, *tree(sub))]

    codes = {cls.code for cls in tree(errors.P2PAgentError)}
    assert codes == set(errors.BY_CODE)
    for code, cls in errors.BY_CODE.items():
        assert cls.code == code and getattr(grpc.StatusCode, code).name == code
        assert type(error_from_code(error_code(cls("x")), "x")) is cls
    assert type(error_from_code("NO_SUCH_CODE", "x")) is errors.Internal
    assert type(error_from_code("INVALID_ARGUMENT", "x")) is errors.InvalidArgument

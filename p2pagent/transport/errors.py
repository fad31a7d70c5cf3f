"""Mapping between our error tree and gRPC status codes, in both directions.

Servicers raise `p2pagent.errors` exceptions; the interceptor turns them into statuses with
`status_of`. Clients wrap calls in `map_rpc_errors` so a failed RPC surfaces as one of ours.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from p2pagent import errors

#: ``errors.BY_CODE`` by gRPC status, plus UNAUTHENTICATED (a certificate the node does not
#: accept), which a caller handles like a refusal.
_BY_CODE: dict[grpc.StatusCode, type[errors.P2PAgentError]] = {
    getattr(grpc.StatusCode, code): cls for code, cls in errors.BY_CODE.items()
} | {grpc.StatusCode.UNAUTHENTICATED: errors.PermissionDenied}


#: Trailing metadata key on every status a node's own code raised (its value: the code's
#: name). It tells a client the node answered, not the transport: in particular an
#: UNAVAILABLE carrying it means the node refused the call (nothing was applied), where a bare
#: one may come from a connection lost after the call was applied.
NODE_ANSWER = "p2pagent-error"


#: Trailing metadata key on a RESOURCE_EXHAUSTED status that knows when to come back: the
#: milliseconds to wait before retrying (a rate limit's refill, a quota's expected drain).
RETRY_AFTER = "p2pagent-retry-after-ms"


def retry_after_s(e: grpc.aio.AioRpcError) -> float | None:
    """The retry-after hint of a failed call, in seconds; None when it carries none."""
    for key, value in e.trailing_metadata() or ():
        if key == RETRY_AFTER:
            try:
                return max(0.0, int(value) / 1000)
            except (TypeError, ValueError):
                return None
    return None


def answered_by_node(e: grpc.aio.AioRpcError) -> bool:
    """Whether the failed call's status was raised by the node's own code (``NODE_ANSWER``)."""
    return any(key == NODE_ANSWER for key, _ in e.trailing_metadata() or ())


def surely_not_applied(e: grpc.aio.AioRpcError) -> bool:
    """True when an UNAVAILABLE call surely did nothing: its request never reached a node (no
    connection: gRPC says so only in words), or the node itself refused it (``NODE_ANSWER``)."""
    if e.code() is not grpc.StatusCode.UNAVAILABLE:
        return False
    if answered_by_node(e):
        return True
    detail = (e.details() or "").lower()
    return "failed to connect" in detail or "connection refused" in detail


def status_of(exc: errors.P2PAgentError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.code, grpc.StatusCode.INTERNAL)


def error_from_rpc(e: grpc.aio.AioRpcError) -> errors.P2PAgentError:
    """Our exception for a failed RPC, with the server's message (or a hint when it has none)."""
    code = e.code()
    detail = e.details() or ""
    if code is grpc.StatusCode.UNAVAILABLE:
        detail = _explain_unavailable(detail)
    cls = _BY_CODE.get(code, errors.Internal)
    err = cls(detail or code.name)
    err.code = code.name
    if isinstance(err, errors.ResourceExhausted):
        err.retry_after_s = retry_after_s(e)
    return err


def _explain_unavailable(detail: str) -> str:
    low = detail.lower()
    if "handshake" in low or "ssl" in low or "certificate" in low or "tls" in low:
        return f"TLS handshake failed (certificate refused or from another CA?): {detail}"
    if "connection refused" in low or "failed to connect" in low:
        return f"cannot connect: {detail}"
    return detail


@contextmanager
def map_rpc_errors() -> Iterator[None]:
    """Turns `grpc.aio.AioRpcError` raised inside the block into our error tree."""
    try:
        yield
    except grpc.aio.AioRpcError as e:
        raise error_from_rpc(e) from e

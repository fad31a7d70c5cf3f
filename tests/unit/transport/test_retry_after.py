"""The retry-after hint of a RESOURCE_EXHAUSTED refusal: sent by the guard in the trailing
metadata, read back by the client onto the error it raises."""

from __future__ import annotations

import grpc

from p2pagent import errors
from p2pagent.transport.errors import RETRY_AFTER, error_from_rpc, retry_after_s


def _error(code: grpc.StatusCode, *trailing: tuple[str, str]) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), "x")


def test_the_hint_travels_onto_the_clients_error() -> None:
    err = error_from_rpc(_error(grpc.StatusCode.RESOURCE_EXHAUSTED, (RETRY_AFTER, "250")))
    assert isinstance(err, errors.ResourceExhausted)
    assert err.retry_after_s == 0.25


def test_no_hint_or_a_garbled_one_is_none() -> None:
    assert retry_after_s(_error(grpc.StatusCode.RESOURCE_EXHAUSTED)) is None
    assert retry_after_s(_error(grpc.StatusCode.RESOURCE_EXHAUSTED, (RETRY_AFTER, "soon"))) is None
    err = error_from_rpc(_error(grpc.StatusCode.RESOURCE_EXHAUSTED))
    assert isinstance(err, errors.ResourceExhausted) and err.retry_after_s is None


def test_resource_exhausted_carries_an_optional_hint() -> None:
    assert errors.ResourceExhausted("full").retry_after_s is None
    assert errors.ResourceExhausted("full", retry_after_s=1.5).retry_after_s == 1.5


def test_quoted_cuts_a_callers_string_to_a_short_prefix() -> None:
    assert errors.quoted("abc") == "'abc'"
    huge = "x" * (1 << 20)
    q = errors.quoted(huge)
    assert len(q) < 2 * errors.QUOTE_CHARS
    assert q.startswith("'" + "x" * errors.QUOTE_CHARS + "'") and str(1 << 20) in q

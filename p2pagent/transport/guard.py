"""The guard every RPC passes through: identity, role, revocation, rate limit, open streams,
metrics and error mapping, in one place.

The server finds every method through generic handlers, and wraps each in
``GuardedHandlers``, which hands grpc the method's handler wrapped by the guard (made once per
method); ``Guard`` also works as a grpc.aio interceptor, which does the same per call but costs
a chain of coroutines each time. The checks cannot run before the handler is chosen
(interceptors do not see the TLS peer), so the wrapper reads the caller's SPIFFE identity from
the verified certificate (``caller_identity``) before running the real behaviour. The
handshake itself already refused callers without a certificate from our CA.

Who may call what is the authorization table (``transport.authorization``): one row per
method, naming the roles allowed. Identities of another cluster and revoked identities may call
nothing. Every streaming call is registered in ``transport.streams`` for as long as it runs,
so a revocation or the expiry of the caller's certificate ends it, and one identity holds a
bounded number of them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, NoReturn

import grpc
from cryptography import x509

from p2pagent import errors
from p2pagent.identity.spiffe import Identity, parse
from p2pagent.transport import authorization
from p2pagent.transport.errors import NODE_ANSWER, RETRY_AFTER, status_of
from p2pagent.transport.metrics import RpcMetrics
from p2pagent.transport.stream_calls import (
    _ANSWERS_LAST,
    _end_stream,
    _rate_check,
    _stream_write,
    _StreamWrites,
    answers_last,
    refused_stream_read,
    request_rate_check,
    stream_ender,
    stream_writer,
)
from p2pagent.transport.streams import OpenStream, OpenStreams
from p2pagent.transport.wirescan import varint_field

log = logging.getLogger(__name__)

#: Named here too: the handlers and the stream glue import them from the guard.
__all__ = [
    "Guard",
    "GuardedHandlers",
    "answers_last",
    "caller_identity",
    "refusal_of",
    "request_rate_check",
    "stream_ender",
    "stream_writer",
]

#: Returns a reason when the identity is revoked, else None.
RevocationCheck = Callable[[str], str | None]
#: Returns False when the identity has exceeded its request rate (or raises
#: ResourceExhausted carrying a retry-after hint).
RateCheck = Callable[[Identity], bool]
#: Most bytes a request of the method may have before it is decoded, and the setting that
#: says so; None: only the transport's limit.
RequestLimit = Callable[[str], tuple[int, str] | None]
#: A method's check of its raw request bytes before they are decoded (after the size limit):
#: returns why the request is refused, or None (e.g. too many tensors: api.peer.request_scans).
RequestScan = Callable[[str], Callable[[bytes], str | None] | None]
#: The field number of the request id in a multiplexed stream's messages (InferStream,
#: SubmitStream), or None for other methods. Such a stream's items are checked one by one by
#: its handler (``refusal_of``), so one bad message is answered alone instead of ending it.
MultiplexedId = Callable[[str], int | None]

#: Most distinct certificate identities whose parse is remembered (a cluster has a few
#: hundred nodes and clients; the cache is cleared, not grown, past this).
MAX_CACHED_IDENTITIES = 4096
_parsed: dict[tuple[bytes | str, ...], Identity] = {}
#: Most methods whose wrapped handler the guard keeps (every service's methods, with room).
MAX_WRAPPED_METHODS = 512


def caller_identity(context: grpc.aio.ServicerContext[Any, Any]) -> Identity:
    """The SPIFFE identity of the caller, from the verified client certificate.

    Runs on every call, so it reads only the certificate's peer identities (its subject
    alternative names; the whole auth context costs ten times more) and remembers the
    parse of each set it has seen."""
    values = tuple(context.peer_identities() or ())
    known = _parsed.get(values)
    if known is not None:
        return known
    for raw in values:
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        if text.startswith("spiffe://"):
            try:
                ident = parse(text)
            except errors.InvalidArgument as e:
                # An unknown role lands here: refused at the door, saying which roles exist.
                raise errors.PermissionDenied(
                    f"the client certificate's identity is refused: {e}; issue a certificate "
                    "with `p2pagentctl certs issue --role ROLE`"
                ) from None
            if len(_parsed) >= MAX_CACHED_IDENTITIES:
                _parsed.clear()
            _parsed[values] = ident
            return ident
    raise errors.PermissionDenied("the client certificate carries no valid spiffe:// identity")


_expiry: dict[bytes, float] = {}


def certificate_expiry(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    """When the caller's certificate expires (unix time), from the verified peer certificate
    in the auth context; None when it is not there. Read once per stream, not per call."""
    pems = list(context.auth_context().get("x509_pem_cert") or ())
    if not pems:
        return None
    pem = pems[0] if isinstance(pems[0], bytes) else str(pems[0]).encode()
    # Keyed by the certificate itself: the same bytes have the same expiry (hashing them
    # with SHA-256 first cost more than the dict's own hash of a ~1 KB key).
    key = pem
    known = _expiry.get(key)
    if known is None:
        try:
            known = x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()
        except ValueError:
            return None
        if len(_expiry) >= MAX_CACHED_IDENTITIES:
            _expiry.clear()
        _expiry[key] = known
    return known


class Guard(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        cluster: str,
        metrics: RpcMetrics | None = None,
        revoked: RevocationCheck | None = None,
        allow_rate: RateCheck | None = None,
        request_limit: RequestLimit | None = None,
        streams: OpenStreams | None = None,
        request_scan: RequestScan | None = None,
        multiplexed: MultiplexedId | None = None,
    ) -> None:
        self._cluster = cluster
        self._multiplexed = multiplexed
        self._request_limit = request_limit
        self._request_scan = request_scan
        self._metrics = metrics
        self._revoked = revoked
        self._allow_rate = allow_rate
        self.streams = streams if streams is not None else OpenStreams(0)
        #: method -> (the servicer's handler, our wrapper of it). grpc asks for the handler on
        #: every call and gets the same object back; wrapping it anew each time (closures,
        #: a metrics lookup, grpc's handler tuple) was a per-request cost (issue 26).
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

    def authorize(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Identity:
        return self.admit(method, caller_identity(context))

    def admit(self, method: str, ident: Identity) -> Identity:
        """The checks of ``authorize`` for an identity read elsewhere (the HTTP door's
        client certificate): cluster, revocation, the method's roles, the rate limit."""
        if ident.cluster != self._cluster:
            raise errors.PermissionDenied(
                f"{ident} belongs to cluster {ident.cluster!r}, not {self._cluster!r}"
            )
        if self._revoked is not None:
            reason = self._revoked(ident.uri)
            if reason is not None:
                raise errors.PermissionDenied(f"{ident} has been revoked: {reason}")
        authorization.authorize(method, ident)
        self.check_rate(ident)
        return ident

    def check_rate(self, ident: Identity) -> None:
        if self._allow_rate is not None and not self._allow_rate(ident):
            raise errors.ResourceExhausted(f"rate limit exceeded for {ident}; slow down and retry")

    def open_stream(
        self, ident: Identity, context: grpc.aio.ServicerContext[Any, Any]
    ) -> OpenStream:
        # Both read only if needed: the expiry if the stream outlives the registry's first
        # expiry check, the peer to cut its connection.
        return self.streams.open(
            ident, partial(certificate_expiry, context), partial(_peer, context)
        )

    def revoke_streams(self, uri: str, reason: str) -> int:
        """Ends every open stream of ``uri`` (it has just been revoked)."""
        return self.streams.end_identity(
            uri, errors.PermissionDenied(f"{uri} has been revoked: {reason}")
        )

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self.guarded(handler_call_details.method, handler)

    def guarded(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """``handler`` of ``method`` behind the guard's checks (made once per method)."""
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = _wrap(handler, method, self)
        if len(self._wrapped) < MAX_WRAPPED_METHODS:  # the services' methods: a fixed set
            self._wrapped[method] = (handler, wrapped)
        return wrapped


class GuardedHandlers(grpc.GenericRpcHandler):
    """A service's generic handler with every method it serves behind the guard.

    The server wraps each generic handler added to it in one of these instead of running the
    guard as an interceptor: grpc.aio runs interceptors as a chain of coroutines on every call
    (``intercept_service`` and its continuation), while a generic handler is asked with a
    plain call (issue 26: the per-call cost of the unary path). What the guard checks is the
    same: every method any service serves is found through here."""

    def __init__(self, inner: grpc.GenericRpcHandler, guard: Guard) -> None:
        self._inner = inner
        self._guard = guard

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._guard.guarded(handler_call_details.method, handler)


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, guard: Guard
) -> grpc.RpcMethodHandler[Any, Any]:
    rpc = None if guard._metrics is None else guard._metrics.rpc(method, _rpc_type(handler))

    def begin() -> float:
        if rpc is not None:
            rpc.started()
        return time.perf_counter()

    def finish(start: float, code: str) -> None:
        if rpc is not None:
            rpc.handled(code, time.perf_counter() - start)

    async def fail(context: Any, exc: BaseException, start: float) -> None:
        answer: tuple[tuple[str, str], ...] = ()
        if isinstance(exc, errors.P2PAgentError):
            status, message = status_of(exc), str(exc)
            # Errors may carry trailers of their own (a Watch's resume position).
            answer = ((NODE_ANSWER, status.name), *getattr(exc, "trailers", ()))
            retry_after = getattr(exc, "retry_after_s", None)
            if retry_after is not None:
                answer += ((RETRY_AFTER, str(int(retry_after * 1000) + 1)),)  # never early
        elif isinstance(exc, NotImplementedError):
            # The generated servicer base raises this for RPCs this build does not serve.
            status, message = grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented"
        else:
            log.exception("unexpected error in %s", method)
            status, message = (
                grpc.StatusCode.INTERNAL,
                f"internal error: {type(exc).__name__}: {exc}",
            )
        finish(start, status.name)
        _drop_frames(exc)
        await context.abort(status, message, trailing_metadata=answer)

    async def answer_raised(
        context: Any, e: BaseException, start: float, stream: OpenStream | None, gone: bool
    ) -> NoReturn:
        """The status of a call whose handler raised ``e``: grpc's own for an abort, a cancel
        from elsewhere or a call already ``gone`` (nobody is left to answer; grpc ends such
        a call quietly); else ``fail``'s, with the registry's error for a stream it ended."""
        if isinstance(e, grpc.aio.AbortError):
            finish(start, _code_name(context))
            raise e
        if isinstance(e, asyncio.CancelledError):
            ended = ended_by_us(stream)
            if ended is None:
                finish(start, "CANCELLED")
                raise e
            await fail(context, ended, start)
        elif isinstance(e, Exception):
            if gone:
                finish(start, "CANCELLED")
                raise e
            await fail(context, e, start)
        raise e  # unreachable after fail (it aborts); any other BaseException passes

    def ended_by_us(stream: OpenStream | None) -> errors.P2PAgentError | None:
        """The error a cancelled stream was ended with by the stream registry (revoked,
        certificate expired), or None when the cancel came from elsewhere (the client)."""
        if stream is None or stream.ended is None:
            return None
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # we answer the cancel ourselves, with the status below
        return stream.ended

    def unary_response(behavior: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
        async def run(request: Any, context: Any) -> Any:
            start = begin()
            stream: OpenStream | None = None
            try:
                try:
                    ident = guard.authorize(method, context)
                except errors.P2PAgentError:
                    if streaming:
                        await refused_stream_read(request)
                    raise
                _check_decoded(request)
                if streaming:
                    # Client streaming (uploads) or a coroutine that writes: always inside
                    # our code or a read, so always safe to cancel.
                    stream = guard.open_stream(ident, context)
                    stream.busy = True
                response = await behavior(
                    _checked_stream(request) if streaming else request, context
                )
            except BaseException as e:
                await answer_raised(context, e, start, stream, gone=False)
            finally:
                if stream is not None:
                    guard.streams.close(stream)
            finish(start, _code_name(context))
            return response

        return run

    def last_with_status(behavior: Callable[..., Any]) -> Callable[..., Any]:
        # Served to grpc as a unary call (its last message sent with the status), registered
        # as a stream while it runs (revocation and expiry end it).
        async def run(request: Any, context: Any) -> Any:
            start = begin()
            stream: OpenStream | None = None
            writes: _StreamWrites | None = None
            try:
                ident = guard.authorize(method, context)
                _check_decoded(request)
                stream = guard.open_stream(ident, context)
                opened = stream
                _end_stream.set(lambda e: guard.streams.end(opened, e))
                writes = _StreamWrites(stream, context, handler.response_serializer)
                _stream_write.set(writes)
                stream.busy = True  # in our code but for its writes: the registry may cancel
                response = await behavior(request, context)
                stream.busy = False
            except BaseException as e:
                gone = writes is not None and e is writes.failed  # an earlier write failed
                await answer_raised(context, e, start, stream, gone)
            finally:
                if stream is not None:
                    guard.streams.close(stream)
            finish(start, _code_name(context))
            return response

        return run

    def stream_response(behavior: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):

            async def writes(request: Any, context: Any) -> None:
                # A coroutine that writes each item the behaviour yields, not an async
                # generator around it: grpc drives a generator with a loop of its own, one
                # more generator and four more resumes a call (issue 26: SubmitAndWait's cost).
                start = begin()
                stream: OpenStream | None = None
                writing = False
                try:
                    ident = guard.authorize(method, context)
                    _check_decoded(request)
                    stream = guard.open_stream(ident, context)
                    opened = stream
                    _end_stream.set(lambda e: guard.streams.end(opened, e))
                    checked = request if id_field is not None else _checked_stream(request)
                    if id_field is not None and guard._allow_rate is not None:
                        _rate_check.set(lambda: guard.check_rate(ident))
                    items = aiter(behavior(checked, context))
                    write = context.write
                    while True:
                        stream.busy = True  # waiting in our code: the registry may cancel
                        try:
                            item = await anext(items)
                        except StopAsyncIteration:
                            break
                        finally:
                            stream.busy = False
                        writing = True
                        await write(item)  # never cancelled by the registry (module doc)
                        writing = False
                        if stream.ended is not None:
                            raise stream.ended  # ended while grpc was writing
                except BaseException as e:
                    # grpc's write fails once the call is gone (the client left, or its
                    # connection was cut), as its own loop over a generator's items would.
                    await answer_raised(context, e, start, stream, gone=writing)
                finally:
                    if stream is not None:
                        guard.streams.close(stream)
                finish(start, _code_name(context))

            return writes
        # A coroutine that writes with context.write (e.g. the health service's Watch).
        return unary_response(behavior, streaming=True)

    limit = guard._request_limit(method) if guard._request_limit is not None else None
    scan = guard._request_scan(method) if guard._request_scan is not None else None
    id_field = guard._multiplexed(method) if guard._multiplexed is not None else None
    deserializer = _tolerant(handler.request_deserializer, method, limit, scan, id_field)
    kind_args = {
        "request_deserializer": deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            unary_response(handler.unary_unary, streaming=False), **kind_args
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary_response(handler.stream_unary, streaming=True), **kind_args
        )
    if handler.unary_stream:
        if getattr(handler.unary_stream, _ANSWERS_LAST, False):
            return grpc.unary_unary_rpc_method_handler(
                last_with_status(handler.unary_stream), **kind_args
            )
        return grpc.unary_stream_rpc_method_handler(
            stream_response(handler.unary_stream), **kind_args
        )
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(
        stream_response(handler.stream_stream), **kind_args
    )


def _peer(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    try:
        return str(context.peer())
    except Exception:  # a test double, or a call already gone
        return ""


def _drop_frames(exc: BaseException | None) -> None:
    """Clears the tracebacks of a refusal and its causes: their frames hold the request, and
    an error kept in a reference cycle would keep a peer's payload alive until a full GC."""
    for _ in range(16):  # a chain is short; a hand-made cycle must not hang the loop
        if exc is None:
            return
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


class _Undecodable:
    """Stands in for a request whose bytes are not a valid message of the method's type.

    grpc would otherwise fail inside its own deserializer and answer with a generic
    INTERNAL; we decode tolerantly and refuse in the wrapper with a status that says why."""

    __slots__ = ("reason", "request_id", "type_name")

    def __init__(self, type_name: str, reason: str, request_id: int = 0) -> None:
        self.type_name = type_name
        self.reason = reason
        self.request_id = request_id


def _tolerant(
    deserializer: Callable[[bytes], Any] | None,
    method: str = "",
    limit: tuple[int, str] | None = None,
    scan: Callable[[bytes], str | None] | None = None,
    id_field: int | None = None,
) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def request_id(data: bytes) -> int:
        # A multiplexed stream answers a refused message under its id, read from the bytes.
        return (varint_field(data, id_field) or 0) if id_field is not None else 0

    def decode(data: bytes) -> Any:
        if limit is not None and len(data) > limit[0]:
            # Refused before a byte is decoded: decoding is what costs memory.
            return _Oversized(oversized(method, len(data), *limit), request_id(data))
        if scan is not None and (why := scan(data)) is not None:
            return _Oversized(f"{method}: {why}", request_id(data))
        try:
            return deserializer(data)
        except Exception as e:  # protobuf's DecodeError, or anything a custom decoder raises
            owner = getattr(deserializer, "__self__", None)
            name = getattr(owner, "__name__", "message")
            return _Undecodable(name, f"{type(e).__name__}: {e}", request_id(data))

    return decode


class _Oversized:
    """Stands in for a request over its method's size limit, refused without decoding."""

    __slots__ = ("reason", "request_id")

    def __init__(self, reason: str, request_id: int = 0) -> None:
        self.reason = reason
        self.request_id = request_id


def oversized(method: str, size: int, limit: int, setting: str) -> str:
    return (
        f"{method}: a request of {size} bytes is over the {limit} bytes this node accepts "
        f"({setting}); send less"
    )


def refusal_of(item: Any) -> tuple[int, errors.InvalidArgument] | None:
    """For an item of a multiplexed stream the guard could not decode (over its size limit,
    or not a valid message): its request id (0 when unreadable) and the error to answer it
    with; None for a decoded message."""
    if isinstance(item, (_Oversized, _Undecodable)):
        try:
            _check_decoded(item)
        except errors.InvalidArgument as e:
            return item.request_id, e
    return None


def _check_decoded(request: Any) -> None:
    if isinstance(request, _Oversized):
        raise errors.InvalidArgument(request.reason)
    if isinstance(request, _Undecodable):
        raise errors.InvalidArgument(
            f"request is not a valid {request.type_name} ({request.reason}); "
            "send a message built from the published proto"
        )


def _checked_stream(request: Any) -> Any:
    """Client-streaming requests arrive as an async iterator; refuse undecodable items."""
    if not hasattr(request, "__aiter__"):
        return request

    async def items() -> AsyncIterator[Any]:
        async for item in request:
            _check_decoded(item)
            yield item

    return items()


def _rpc_type(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    if handler.unary_unary:
        return "unary"
    if handler.stream_unary:
        return "client_stream"
    if handler.unary_stream:
        return "server_stream"
    return "bidi_stream"


def _code_name(context: Any) -> str:
    try:
        code = context.code()
    except Exception:  # older grpc: no code() on aio contexts
        code = None
    return code.name if isinstance(code, grpc.StatusCode) else "OK"

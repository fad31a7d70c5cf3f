"""The door's routes: OpenAI's API over the node's own generation and text paths.

Each route is authorised as the gRPC method it stands for (``ListModels``, ``Generate``,
``Embed``), through the same guard: a caller has the same roles, the same rate limit, and a
revoked identity is refused on both. Bodies are read here, bounded by
``openai.max_request_bytes``, and parsed by ``openai.requests``; every refusal is OpenAI's
error shape (``openai.errors``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from p2pagent import errors
from p2pagent.api.text import TextNode, run_texts
from p2pagent.errors import quoted
from p2pagent.identity.spiffe import Identity
from p2pagent.inference.generation.lazy import imported
from p2pagent.inference.hf.folder import EMBEDDING, GENERATION
from p2pagent.openai import requests as rq
from p2pagent.openai.errors import HttpError, ParamError, PayloadTooLarge, http_error
from p2pagent.openai.gate import DoorGate
from p2pagent.openai.responses import DONE, Completion, embedding_list, model_list, sse
from p2pagent.openai.tls import caller_identity, certificate_expiry
from p2pagent.transport.authorization import AGENT

if TYPE_CHECKING:
    from p2pagent.inference.generation.engine import Event
    from p2pagent.inference.generation.placed import PlacedGeneration
    from p2pagent.transport.guard import Guard

log = logging.getLogger(__name__)

#: Each route is the gRPC method whose row of the authorization table admits its callers.
LIST_MODELS, GENERATE, EMBED = AGENT + "ListModels", AGENT + "Generate", AGENT + "Embed"


class DoorNode(TextNode, Protocol):
    """What the door needs of the node."""

    @property
    def guard(self) -> Guard: ...

    @property
    def placed_generation(self) -> PlacedGeneration: ...

    @property
    def started_at(self) -> float: ...


def respond(e: HttpError) -> JSONResponse:
    return JSONResponse(e.body, e.status, headers=e.headers)


def build_app(node: DoorNode) -> FastAPI:
    app = FastAPI(title="p2pagent OpenAI-compatible API", docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip
    limit = node.config.openai.max_request_bytes

    @app.exception_handler(errors.P2PAgentError)
    async def _ours(_: Request, exc: errors.P2PAgentError) -> JSONResponse:
        return respond(http_error(exc))

    @app.exception_handler(404)
    async def _no_route(request: Request, _: Exception) -> JSONResponse:
        return respond(http_error(errors.NotFound(
            f"no route {request.method} {quoted(request.url.path)}: this node serves "
            "/v1/models, /v1/completions, /v1/chat/completions and /v1/embeddings"
        )))  # fmt: skip

    @app.exception_handler(405)
    async def _bad_method(request: Request, _: Exception) -> JSONResponse:
        e = http_error(errors.InvalidArgument(
            f"{request.method} is not allowed on {quoted(request.url.path)}"))  # fmt: skip
        return JSONResponse(e.body, 405)

    # Bugs and the connection limit: our own layer, so each bug's traceback is logged once
    # and every answer is OpenAI's error shape (see gate.py).
    app.add_middleware(DoorGate, limit=node.config.openai.max_connections)

    def admit(request: Request, method: str) -> Identity:
        ident = caller_identity(request.scope.get("state") or {})
        return node.guard.admit(method, ident)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        admit(request, LIST_MODELS)
        return JSONResponse(model_list(served_models(node)))

    @app.get("/v1/models/{model}")
    async def model(request: Request, model: str) -> JSONResponse:
        admit(request, LIST_MODELS)
        for found in model_list(served_models(node))["data"]:
            if found["id"] == model:
                return JSONResponse(found)
        raise errors.NotFound(
            f"no decoder or embedding model {quoted(model)} on this node or published; "
            "GET /v1/models lists them"
        )

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        ident = admit(request, GENERATE)
        body = rq.parse(rq.CompletionRequest, await read_body(request, limit))
        text, ids = rq.completion_prompt(body)
        return await generate(node, request, ident, body, text=text, ids=ids)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        ident = admit(request, GENERATE)
        body = rq.parse(rq.ChatRequest, await read_body(request, limit))
        return await generate(node, request, ident, body, messages=rq.chat_messages(body))

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> JSONResponse:
        ident = admit(request, EMBED)
        body = rq.parse(rq.EmbeddingRequest, await read_body(request, limit))
        texts = rq.embedding_texts(body, node.config.openai.max_embedding_inputs)
        if body.model in node.config.generation.folder_paths():
            raise errors.InvalidArgument(
                f"model {quoted(body.model)} is a text-generation model: /v1/embeddings "
                "serves embedding models (GET /v1/models lists each model's task)"
            )
        _, encoded, rows = await run_texts(
            node, body.model, body.model_version, texts, False, EMBEDDING, None, owner=ident.uri
        )
        vectors = [r.tolist() for r in rows]
        if body.dimensions is not None and vectors and body.dimensions != len(vectors[0]):
            raise ParamError(
                "dimensions", f"model {quoted(body.model)} gives {len(vectors[0])} "
                f"dimensions, not {body.dimensions}: leave dimensions out"
            )  # fmt: skip
        tokens = sum(len(e.ids) for e in encoded)
        return JSONResponse(embedding_list(body.model, vectors, tokens, body.encoding_format))

    return app


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused once it is over ``limit`` bytes (413) without reading on."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the request body is {declared} bytes, over openai.max_request_bytes ({limit})"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is over openai.max_request_bytes ({limit})")
        chunks.append(chunk)
    return b"".join(chunks)


def served_models(node: DoorNode) -> list[tuple[str, str, int, str]]:
    """(name, task, created, owner) of the decoder and encoder models this node can serve:
    its own decoder folders, and the newest version of each published one."""
    from p2pagent.inference.formats import ModelFormat
    from p2pagent.models.loadable import spec_of

    found: dict[str, tuple[str, str, int, str]] = {}
    for entry in node.models.entries():  # oldest first per name: the newest stays
        m = entry.manifest
        if m.format is not ModelFormat.HF_FOLDER:
            continue
        try:
            spec = spec_of(m)
        except errors.P2PAgentError:
            continue  # metadata this node cannot read: it could not serve it either
        task = spec.arch_config.get("task") if spec is not None else None
        if task in (GENERATION, EMBEDDING):
            found[m.name] = (m.name, str(task), int(m.created_unix), m.owner or "p2pagent")
    started = int(node.started_at)
    for name in node.config.generation.folder_paths():
        found[name] = (name, GENERATION, started, "p2pagent")
    return sorted(found.values())


async def generate(
    node: DoorNode,
    request: Request,
    ident: Identity,
    body: rq.ChatRequest | rq.CompletionRequest,
    *,
    text: str = "",
    ids: tuple[int, ...] = (),
    messages: list[tuple[str, str]] | None = None,
) -> Response:
    """Runs one completion on the node's generation; streamed as server-sent events or
    answered whole. Everything refused is refused before the first byte is sent."""
    rq.unsupported(body)
    # torch and transformers load on the first generation of a node: off the event loop.
    await imported("p2pagent.inference.generation.service")
    from p2pagent.inference.generation.folder import ChatMessage
    from p2pagent.inference.generation.service import Prompt

    params = rq.sampling(body)
    prompt = Prompt(
        text=text, ids=ids, messages=tuple(ChatMessage(r, c) for r, c in messages or ())
    )
    chat = messages is not None
    try:
        events = await node.placed_generation.generate(
            body.model, prompt, params, body.model_version
        )
    except errors.InvalidArgument as e:
        raise rq.named(e, "messages" if chat else "prompt") from None
    completion = Completion(body.model, chat, int(time.time()), with_ids=body.return_token_ids)
    if not body.stream:
        return await whole(completion, events)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    streams = node.guard.streams
    stream = streams.open(ident, certificate_expiry(request.scope.get("state") or {}))
    chunks = streamed(
        completion, events, include_usage, lambda: stream.ended, lambda: streams.close(stream)
    )
    # Started now, so even a caller gone before the body is sent has its sequence and its
    # stream closed (asyncio closes a started async generator that is dropped).
    first = await anext(chunks)
    return StreamingResponse(
        _then(first, chunks), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )


async def whole(completion: Completion, events: AsyncIterator[Event]) -> JSONResponse:
    from p2pagent.inference.generation.engine import FinishEvent

    texts: list[str] = []
    ids: list[int] = []
    try:
        async for event in events:
            texts.append(event.text)
            if isinstance(event, FinishEvent):
                if event.error:
                    raise errors.Internal(f"model {quoted(completion.model)}: {event.error}")
                body = completion.whole(
                    "".join(texts), event.reason.value, ids, event.prompt_tokens,
                    event.generated_tokens,
                )  # fmt: skip
                return JSONResponse(body)
            ids.append(event.token_id)
    finally:
        await _close(events)
    raise errors.Internal(
        f"model {quoted(completion.model)}: the generation ended without a finish"
    )


async def streamed(
    completion: Completion,
    events: AsyncIterator[Event],
    include_usage: bool,
    ended: Callable[[], errors.P2PAgentError | None],
    closed: Callable[[], None],
) -> AsyncIterator[bytes]:
    """The SSE body: a first chunk with the assistant role (chat), a chunk per text delta,
    the last chunk with the finish reason, the usage chunk when asked, then ``[DONE]``. An
    error after the first byte (the model raised, the caller's identity was revoked) is an
    ``error`` event, then ``[DONE]``; so is a bug of ours, logged once."""
    try:
        yield sse(completion.chunk("", first=True, include_usage=include_usage))
        chunks = _event_chunks(completion, events, include_usage, ended)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk
        yield DONE
    except errors.P2PAgentError as e:  # after the first byte: an error event, then the end
        yield sse(http_error(e).body)
        yield DONE
    except Exception as e:  # a bug of ours: logged once here, the caller told so
        log.error("OpenAI door: unexpected %s in a stream: %s", type(e).__name__, e, exc_info=e)
        yield sse(http_error(errors.Internal(
            "internal error in the OpenAI door; the node's log has the details")).body)  # fmt: skip
        yield DONE
    finally:
        closed()
        await _close(events)


async def _event_chunks(
    completion: Completion,
    events: AsyncIterator[Event],
    include_usage: bool,
    ended: Callable[[], errors.P2PAgentError | None],
) -> AsyncGenerator[bytes, None]:
    """The chunks of ``streamed`` for the sequence's events, up to its last."""
    from p2pagent.inference.generation.engine import FinishEvent

    async for event in events:
        stopped = ended()
        if stopped is not None:
            yield sse(http_error(stopped).body)
            break
        if isinstance(event, FinishEvent):
            if event.error:
                failed = errors.Internal(f"model {quoted(completion.model)}: {event.error}")
                yield sse(http_error(failed).body)
                break
            yield sse(completion.chunk(event.text, event.reason.value, (), False,
                                       include_usage))  # fmt: skip
            if include_usage:
                yield sse(completion.usage_chunk(event.prompt_tokens, event.generated_tokens))
            break
        if event.text or completion.with_ids:
            yield sse(completion.chunk(event.text, None, (event.token_id,), False,
                                       include_usage))  # fmt: skip


async def _then(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        await _close(rest)


async def _close(it: AsyncIterator[Any]) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()

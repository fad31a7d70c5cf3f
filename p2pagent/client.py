"""The public API for Python programs, over several nodes of one mesh.

A ``Client`` is given the addresses of a few nodes. Every call goes to one of them and moves
on to the next when that one cannot be reached, so a program keeps working while any node is
down, as the mesh does. Calls that are safe to repeat (reads, ``Infer``, ``Wait``) move on
whenever a node fails them with UNAVAILABLE; calls that are not (``Submit``, ``Increment``)
move on only when they surely did nothing (no connection, or the node itself refused them),
and otherwise raise ``OutcomeUnknown``: the node may have applied one before the connection
was lost.

``infer`` and ``run`` calls to one node share one multiplexed stream (``InferStream``,
``SubmitStream``; ``client_streams``). ``run`` follows a task to its result: once its id has
arrived it is journaled at the node that took it, and a lost stream is only a lost view:
``run`` asks again (``Wait``, at any node) for up to ``follow_s`` seconds. Example::

    async with Client.from_certs(["10.0.0.1:7400", "10.0.0.2:7400"], "certs") as mesh:
        outputs = await mesh.run("demo", {"input": torch.randn(1, 256)})
        await mesh.put("agents", "last-run", b"ok", durable=True)

All methods must be awaited on the event loop that entered the client (grpc.aio channels
belong to the loop that made them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from p2pagent._proto import agent_pb2, agent_pb2_grpc
from p2pagent.client_events import final_event
from p2pagent.client_messages import (
    checked_texts,
    decode_outputs,
    encode_inputs,
    infer_stream_cancel,
    infer_stream_request,
    set_request,
    submit_request,
    submit_stream_cancel,
    submit_stream_request,
    task_result,
    write_options,
)
from p2pagent.client_streams import StreamSessions
from p2pagent.errors import (
    DeadlineExceeded,
    InvalidArgument,
    P2PAgentError,
    Unavailable,
    error_for_code,
)
from p2pagent.identity import material as tls
from p2pagent.transport.channels import DEFAULT_MAX_MESSAGE_BYTES, secure_channel
from p2pagent.transport.errors import error_from_rpc, surely_not_applied

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Requests one client keeps in flight on one stream to one node (the node's default
#: ``transport.stream_max_in_flight``; a node set lower refuses the excess, one by one).
STREAM_IN_FLIGHT = 64
#: Pause between rounds over every node while a task's result is being followed.
FOLLOW_BACKOFF_S = (0.2, 5.0)


class OutcomeUnknown(Unavailable):
    """A call that is not safe to repeat failed after it reached a node: it may or may not
    have been applied. For a task, look for it with ``tasks ls`` before submitting again."""


class Client:
    """Calls to any of ``targets`` (``host:port`` of nodes of one mesh), moving on to the next
    one when a node cannot be reached; use ``async with`` (or ``close``)."""

    def __init__(
        self,
        targets: Sequence[str],
        material: tls.TLSMaterial,
        *,
        timeout_s: float = 10.0,
        follow_s: float = 600.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        stream_in_flight: int = STREAM_IN_FLIGHT,
    ) -> None:
        if isinstance(targets, str) or not targets:
            raise InvalidArgument("targets: give a list of node addresses (host:port)")
        self._targets = list(dict.fromkeys(targets))
        self._material = material
        self._timeout = timeout_s
        self._follow = follow_s
        self._max = max_message_bytes
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._current = 0
        self._streams = StreamSessions(lambda target: self._stub(target), stream_in_flight)

    @classmethod
    def from_certs(
        cls,
        targets: Sequence[str],
        certs: str | Path,
        identity: str = "client",
        *,
        timeout_s: float = 10.0,
        follow_s: float = 600.0,
    ) -> Client:
        """A client presenting ``<certs>/<identity>.crt`` (and ``.key``), trusting
        ``<certs>/ca.crt``: the layout ``p2pagentctl certs`` writes. The certificate's role
        bounds what the client may do: ``publish`` needs a publisher (or admin) identity."""
        material = tls.load(tls.TLSPaths.in_dir(Path(certs), identity))
        return cls(targets, material, timeout_s=timeout_s, follow_s=follow_s)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._streams.close()
        channels, self._channels = self._channels, {}
        for ch in channels.values():
            await ch.close()

    @property
    def target(self) -> str:
        """The node calls go to first (the last one that answered)."""
        return self._targets[self._current]

    def _stub(self, target: str) -> agent_pb2_grpc.AgentServiceAsyncStub:
        ch = self._channels.get(target)
        if ch is None:
            ch = self._channels[target] = secure_channel(target, self._material, self._max)
        return agent_pb2_grpc.AgentServiceStub(ch)

    async def _call(
        self,
        call: Callable[[agent_pb2_grpc.AgentServiceAsyncStub], Awaitable[T]],
        *,
        repeatable: bool,
    ) -> T:
        """``call`` on the current node, then on each other one while they cannot be reached."""
        return await self._call_at(lambda target: call(self._stub(target)), repeatable=repeatable)

    async def _call_at(self, call: Callable[[str], Awaitable[T]], *, repeatable: bool) -> T:
        """``_call`` for a call given the node's address (a stream session is per node)."""
        failures = []
        for step in range(len(self._targets)):
            index = (self._current + step) % len(self._targets)
            target = self._targets[index]
            try:
                answer = await call(target)
            except ConnectionError as e:  # a stream session's stream ended under the call
                if not repeatable:
                    raise OutcomeUnknown(f"{target} ended the stream: {e}") from e
                failures.append(f"{target}: {e}")
                continue
            except grpc.aio.AioRpcError as e:
                if e.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise error_from_rpc(e) from e
                if not (repeatable or surely_not_applied(e)):
                    raise OutcomeUnknown(
                        f"{target} failed the call after it was sent ({e.details()}); it may "
                        "or may not have been applied"
                    ) from e
                failures.append(f"{target}: {error_from_rpc(e)}")  # says why, in words
                continue
            self._current = index
            return answer
        raise Unavailable("no node could be reached: " + "; ".join(failures))

    # ---- node ---------------------------------------------------------------------------

    async def status(self) -> agent_pb2.StatusResponse:
        request = agent_pb2.StatusRequest()
        return await self._call(lambda s: s.Status(request, timeout=self._timeout), repeatable=True)

    # ---- inference and tasks --------------------------------------------------------------

    async def infer(
        self, model: str, inputs: Mapping[str, torch.Tensor], *, version: str = ""
    ) -> dict[str, torch.Tensor]:
        """One inference, answered in the call (not journaled: repeated on another node if
        the first one cannot be reached). Concurrent calls to one node share one
        ``InferStream`` (each under its own id; at most ``stream_in_flight`` at once)."""
        build = infer_stream_request(model, encode_inputs(inputs), version, self._timeout)
        # The node answers DEADLINE_EXCEEDED at timeout_s; this bound is for a silent node.
        local_s = self._timeout + 5.0

        async def on(target: str) -> agent_pb2.InferStreamResponse:
            try:
                return await self._streams.get(target, "InferStream").request(  # type: ignore[no-any-return]
                    build, infer_stream_cancel, local_s
                )
            except TimeoutError:
                raise DeadlineExceeded(f"{target} did not answer in {local_s:.0f} s") from None

        answer = await self._call_at(on, repeatable=True)
        if answer.error_code:
            raise error_for_code(answer.error_code, answer.error_message)
        return decode_outputs(answer.outputs)

    async def embed(
        self, model: str, texts: Sequence[str], *, truncate: bool = False, version: str = ""
    ) -> list[list[float]]:
        """One embedding per text from a Hugging Face model folder (the node tokenizes).
        InvalidArgument for an empty list, an empty text, or a text over the model's maximum
        without ``truncate``."""
        request = agent_pb2.EmbedRequest(
            model=model, texts=checked_texts(texts), truncate=truncate, model_version=version
        )
        answer = await self._call(
            lambda s: s.Embed(request, timeout=self._timeout), repeatable=True
        )
        return [list(v.values) for v in answer.embeddings]

    async def classify(
        self, model: str, texts: Sequence[str], *, truncate: bool = False, version: str = ""
    ) -> list[list[tuple[str, float]]]:
        """Per text, every label of a sequence classifier with its score, best first."""
        request = agent_pb2.ClassifyRequest(
            model=model, texts=checked_texts(texts), truncate=truncate, model_version=version
        )
        answer = await self._call(
            lambda s: s.Classify(request, timeout=self._timeout), repeatable=True
        )
        return [[(x.label, x.score) for x in r.scores] for r in answer.results]

    async def classify_tokens(
        self, model: str, texts: Sequence[str], *, truncate: bool = False, version: str = ""
    ) -> list[list[agent_pb2.Entity]]:
        """Per text, the entities a token classifier found (label, score, start, end, text)."""
        request = agent_pb2.ClassifyTokensRequest(
            model=model, texts=checked_texts(texts), truncate=truncate, model_version=version
        )
        answer = await self._call(
            lambda s: s.ClassifyTokens(request, timeout=self._timeout), repeatable=True
        )
        return [list(r.entities) for r in answer.results]

    async def submit(
        self,
        model: str,
        inputs: Mapping[str, torch.Tensor],
        *,
        priority: int = 0,
        deadline_s: float = 0.0,
        version: str = "",
    ) -> str:
        """Submits a task; returns its id once the node that took it has journaled it."""
        request = submit_request(model, inputs, priority, deadline_s, version)
        answer = await self._call(
            lambda s: s.Submit(request, timeout=self._timeout), repeatable=False
        )
        return answer.task_id

    async def wait(self, task_id: str) -> dict[str, torch.Tensor]:
        """The task's outputs once it is done (its error, raised, if it failed), asked of any
        node for up to ``follow_s`` seconds while none can answer."""
        return task_result(await self.follow_task(task_id))

    async def run(
        self,
        model: str,
        inputs: Mapping[str, torch.Tensor],
        *,
        priority: int = 0,
        deadline_s: float = 0.0,
        version: str = "",
        on_event: Callable[[agent_pb2.TaskEvent], object] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Submits a task and returns its outputs (or raises its error), following it across
        lost streams and nodes. ``on_event`` sees each event (the first carries the id)."""
        request = submit_request(model, inputs, priority, deadline_s, version)
        return task_result(await self.follow(request, on_event))

    async def follow(
        self,
        request: agent_pb2.SubmitRequest,
        on_event: Callable[[agent_pb2.TaskEvent], object] | None = None,
    ) -> agent_pb2.TaskEvent:
        """``run`` for a request already built: returns the task's final event (DONE or
        FAILED) instead of its outputs. Concurrent runs on one node share one SubmitStream."""
        task_id = ""
        build = submit_stream_request(request)

        def seen(event: agent_pb2.TaskEvent) -> None:
            nonlocal task_id
            task_id = event.task_id
            if on_event is not None:
                on_event(event)

        async def submit_and_follow(target: str) -> agent_pb2.TaskEvent:
            session = self._streams.get(target, "SubmitStream")
            try:
                answer = await session.request(
                    build, submit_stream_cancel, None, lambda a: seen(a.event)
                )
            except (grpc.aio.AioRpcError, ConnectionError) as e:
                if task_id:  # acknowledged: never submitted again, only followed
                    raise Unavailable(f"lost the stream of task {task_id}: {e}") from e
                raise
            if answer.error_code:
                raise error_for_code(answer.error_code, answer.error_message)
            seen(answer.event)
            return answer.event  # type: ignore[no-any-return]

        try:
            return await self._call_at(submit_and_follow, repeatable=False)
        except P2PAgentError:
            if not task_id:
                raise  # never acknowledged: nothing to follow
            return await self.follow_task(task_id, on_event)  # journaled at its origin

    async def follow_task(
        self, task_id: str, on_event: Callable[[agent_pb2.TaskEvent], object] | None = None
    ) -> agent_pb2.TaskEvent:
        """The task's events (to ``on_event``) until its final one, returned; asked of any
        node, again after a lost stream, for up to ``follow_s`` seconds while none answers."""
        deadline = time.monotonic() + self._follow
        pause = FOLLOW_BACKOFF_S[0]
        request = agent_pb2.WaitRequest(task_id=task_id)
        while True:
            try:
                return await self._call(
                    lambda s: final_event(s.Wait(request), on_event), repeatable=True
                )
            except Unavailable as e:
                if time.monotonic() + pause > deadline:
                    raise
                if pause == FOLLOW_BACKOFF_S[0]:
                    log.warning(
                        "task %s: no node answers (%s); asking again for up to %.0f s",
                        task_id, e, deadline - time.monotonic(),
                    )  # fmt: skip
            await asyncio.sleep(pause)
            pause = min(2 * pause, FOLLOW_BACKOFF_S[1])

    # ---- replicated state -----------------------------------------------------------------

    async def put(self, namespace: str, key: str, value: bytes, *, durable: bool = False) -> None:
        """Writes a last-writer-wins register (repeating it is harmless)."""
        request = agent_pb2.PutRequest(
            namespace=namespace, key=key, value=value, options=write_options(durable)
        )
        await self._call(lambda s: s.Put(request, timeout=self._timeout), repeatable=True)

    async def get(self, namespace: str, key: str) -> agent_pb2.GetResponse:
        """The key as the answering node sees it (``found``, ``values``, ``counter``...)."""
        request = agent_pb2.GetRequest(namespace=namespace, key=key)
        return await self._call(lambda s: s.Get(request, timeout=self._timeout), repeatable=True)

    async def increment(
        self, namespace: str, key: str, delta: int = 1, *, durable: bool = False
    ) -> None:
        """Adds ``delta`` to a counter. Not repeated after it reached a node (OutcomeUnknown)."""
        request = agent_pb2.IncrementRequest(
            namespace=namespace, key=key, delta=delta, options=write_options(durable)
        )
        await self._call(lambda s: s.Increment(request, timeout=self._timeout), repeatable=False)

    async def delete(self, namespace: str, key: str, *, durable: bool = False) -> None:
        """Deletes a key (repeating it is harmless)."""
        request = agent_pb2.DeleteRequest(
            namespace=namespace, key=key, options=write_options(durable)
        )
        await self._call(lambda s: s.Delete(request, timeout=self._timeout), repeatable=True)

    async def set_add(
        self, namespace: str, key: str, elements: Sequence[bytes], *, durable: bool = False
    ) -> None:
        """Adds elements to an add-wins set (repeating it is harmless)."""
        request = set_request(agent_pb2.SetAddRequest, namespace, key, elements, durable)
        await self._call(lambda s: s.SetAdd(request, timeout=self._timeout), repeatable=True)

    async def set_remove(
        self, namespace: str, key: str, elements: Sequence[bytes], *, durable: bool = False
    ) -> None:
        """Removes elements from a set (the adds this node has seen; repeating it is harmless)."""
        request = set_request(agent_pb2.SetRemoveRequest, namespace, key, elements, durable)
        await self._call(lambda s: s.SetRemove(request, timeout=self._timeout), repeatable=True)

    async def scan(
        self, namespace: str, prefix: str = ""
    ) -> AsyncIterator[tuple[str, agent_pb2.GetResponse]]:
        """Every key under ``prefix`` with its value, in key order, page by page (a page that
        fails moves on to another node and goes on after the last key seen)."""
        after = ""
        while True:
            request = agent_pb2.ScanRequest(namespace=namespace, prefix=prefix, page_token=after)
            page = await self._scan_page(request)
            for entry in page.entries:
                yield entry.key, entry.value
            if not page.next_page_token:
                return
            after = page.next_page_token

    async def _scan_page(self, request: agent_pb2.ScanRequest) -> agent_pb2.ScanResponse:
        return await self._call(lambda s: s.Scan(request, timeout=self._timeout), repeatable=True)

    # ---- models -----------------------------------------------------------------------------

    async def publish(
        self,
        path: str | Path,
        name: str,
        *,
        format: str = "",
        replicas: int | str = 1,
        chunk_size: int = 0,
        metadata: str | Path | None = None,
    ) -> agent_pb2.ModelVersion:
        """Publishes the model file (or Hugging Face model folder) at ``path`` as ``name``
        (``replicas``: a count or "all"); what a node would refuse is refused before a byte
        is sent (InvalidArgument).
        ``metadata`` defaults to ``<stem>.metadata.json`` beside the file. The upload carries
        the file's SHA-256: DataLoss when the node received other bytes (nothing was
        published; publish again); InvalidArgument when the node's check refused the model
        (a pickle, a file that does not load or run on its metadata's inputs)."""
        from p2pagent.models import upload

        file = Path(path)
        # Off the loop: a folder is read whole twice (file hashes, then the pack's).
        header = await asyncio.to_thread(
            upload.upload_header, file, name, format=format, replicas=str(replicas),
            chunk_size=chunk_size, metadata=Path(metadata) if metadata is not None else None,
        )  # fmt: skip
        return await self.upload(file, header)

    async def upload(
        self,
        path: Path,
        header: agent_pb2.PublishModelRequest.Header,
        sent: Callable[[int], object] | None = None,
    ) -> agent_pb2.ModelVersion:
        """``publish`` with the header already made (``models.upload.upload_header``, which
        checks the file): ``sent`` is told the size of each piece as it goes."""
        from p2pagent.models import upload

        async def send(stub: agent_pb2_grpc.AgentServiceAsyncStub) -> agent_pb2.ModelVersion:
            answer = await upload.send_upload(
                stub, path, header, sent, call_timeout_s=max(self._timeout, 600)
            )
            return answer.version

        # Not repeated after it reached a node: a second publish would make a second version.
        return await self._call(send, repeatable=False)

    async def models(self, name: str = "") -> list[agent_pb2.ModelVersion]:
        """Every published version (of ``name``, or of every model), with its holders."""
        request = agent_pb2.ListModelsRequest(name=name)
        answer = await self._call(
            lambda s: s.ListModels(request, timeout=self._timeout), repeatable=True
        )
        return list(answer.versions)

    # ---- generation -----------------------------------------------------------------------

    async def generate(
        self,
        model: str,
        prompt: str = "",
        *,
        prompt_ids: Sequence[int] = (),
        messages: Sequence[tuple[str, str]] = (),
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float | None = None,
        top_k: int = 0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        model_version: str = "",
    ) -> AsyncIterator[agent_pb2.GenerateResponse]:
        """Generates with a decoder model, yielding one message per token as it is made
        (``text``, ``token_ids``) and a last one with ``finish_reason`` (length, stop) and
        the token counts. Give one of ``prompt`` (text), ``prompt_ids`` or ``messages``
        (``(role, content)`` pairs, rendered with the model's chat template). Temperature 0
        is greedy; greedy and seeded sampling give the same tokens every time. A node that
        cannot be reached before the first token is passed over; stopping the iteration
        (``break``, ``aclose``) cancels the generation on the node. ``model`` is a node's
        local decoder folder or a published one (``model_version`` pins a version by its
        manifest id or a prefix; empty runs the newest), pulled by the node on demand."""
        request = agent_pb2.GenerateRequest(
            model=model,
            prompt=prompt,
            prompt_ids=list(prompt_ids),
            messages=[agent_pb2.ChatMessage(role=r, content=c) for r, c in messages],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=list(stop),
            model_version=model_version,
        )
        failures = []
        for step in range(len(self._targets)):
            index = (self._current + step) % len(self._targets)
            target = self._targets[index]
            call = self._stub(target).Generate(request, timeout=self._follow)
            started = False
            try:
                async for message in call:
                    started = True
                    self._current = index
                    yield message
                return
            except grpc.aio.AioRpcError as e:
                if e.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise error_from_rpc(e) from e
                if started:
                    raise Unavailable(f"{target} lost the generation: {e.details()}") from e
                failures.append(f"{target}: {e.details()}")
            finally:
                call.cancel()
        raise Unavailable("no node could be reached: " + "; ".join(failures))

    # ---- any RPC --------------------------------------------------------------------------

    async def call(
        self, rpc: str, request: object, *, repeatable: bool, timeout_s: float | None = None
    ) -> Any:
        """The Agent RPC named ``rpc`` with a request built by the caller (for the options
        the methods above leave out; ``p2pagentctl`` uses it), with their failover and errors:
        ``repeatable`` says whether a call that reached a node may be sent to another one."""
        _check_rpc(rpc, streams=False)
        timeout = self._timeout if timeout_s is None else timeout_s
        return await self._call(
            lambda s: getattr(s, rpc)(request, timeout=timeout), repeatable=repeatable
        )

    async def stream(self, rpc: str, request: object) -> AsyncGenerator[Any, None]:
        """The server-streaming Agent RPC named ``rpc`` (``Watch``): opened on the first node
        that accepts it, then read from that node; a stream lost later raises (as our
        error), since where to resume is the caller's to say."""

        _check_rpc(rpc, streams=True)

        async def open_stream(stub: agent_pb2_grpc.AgentServiceAsyncStub) -> Any:
            call = getattr(stub, rpc)(request)
            await call.wait_for_connection()
            return call

        call = await self._call(open_stream, repeatable=True)
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from e
        finally:
            call.cancel()


def _check_rpc(rpc: str, *, streams: bool) -> None:
    """``rpc`` is an Agent RPC that answers with a stream (``streams``) or with one message."""
    method = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].methods_by_name.get(rpc)
    if method is None:
        raise InvalidArgument(f"{rpc!r} is not an RPC of the Agent service (see docs/API.md)")
    if method.client_streaming:  # uploads, InferStream, SubmitStream: their own methods
        raise InvalidArgument(f"{rpc} takes a stream of requests: use its own Client method")
    if method.server_streaming != streams:
        use = "stream" if method.server_streaming else "call"
        answer = "a stream" if method.server_streaming else "one message"
        raise InvalidArgument(f"{rpc} answers with {answer}: use Client.{use}")

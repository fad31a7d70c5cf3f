"""Models RPCs: the ``Agent`` handlers (public) and the ``Peer`` handlers (node-to-node) of
the models capability. Thin: decode, call the driver, encode; errors are `p2pagent.errors`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc

from p2pagent._proto import agent_pb2, peer_pb2
from p2pagent.errors import InvalidArgument
from p2pagent.inference.spec import ModelSpec
from p2pagent.models.chunk_wire import FETCH_CHUNKS, ChunkAnswers
from p2pagent.models.driver import ModelsDriver
from p2pagent.models.loadable import spec_of
from p2pagent.models.manifest import Manifest, check_model_name
from p2pagent.models.registry import Entry
from p2pagent.models.upload import UPLOAD_ACCEPTED
from p2pagent.transport.guard import caller_identity

Ctx = grpc.aio.ServicerContext[Any, Any]


class ModelsNode(Protocol):
    """What the model-sharing handlers need of the node."""

    @property
    def name(self) -> str: ...

    @property
    def models(self) -> ModelsDriver: ...


def _driver(node: ModelsNode) -> ModelsDriver:
    return node.models


def version_proto(m: Manifest, holders: frozenset[str] | set[str]) -> agent_pb2.ModelVersion:
    spec = spec_of(m)
    return agent_pb2.ModelVersion(
        name=m.name,
        manifest_id=m.manifest_id,
        format=m.format.value,
        size=m.size,
        sha256=m.sha256,
        chunk_size=m.chunk_size,
        chunks=m.chunk_count,
        created_unix=m.created_unix,
        holders=sorted(holders),
        replicas=str(m.replicas),
        metadata=spec.to_proto() if spec is not None else None,
        owner=m.owner,
    )


def metadata_dict(meta: agent_pb2.ModelMetadata) -> dict[str, object]:
    """The manifest form of an upload's metadata: a ModelSpec, or {} when none was given."""
    if not meta.inputs and not meta.outputs and not meta.architecture:
        return {}
    return ModelSpec.from_proto(meta).to_dict()


class ModelsAgentApi:
    _models_node: ModelsNode

    async def PublishModel(
        self, request_iterator: AsyncIterator[agent_pb2.PublishModelRequest], context: Ctx
    ) -> agent_pb2.PublishModelResponse:
        driver = _driver(self._models_node)
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument(
                "PublishModel's first message must be the header (name, format, size); "
                "file bytes follow in the next messages"
            )
        h = first.header

        async def pieces() -> AsyncIterator[bytes]:
            # Asked for only after the header passed publish's checks: the client sends the
            # bytes on this cue, so a refusal never meets its writes (models.upload).
            await context.send_initial_metadata((UPLOAD_ACCEPTED,))
            async for msg in request_iterator:
                if msg.WhichOneof("part") != "data":
                    raise InvalidArgument(
                        "PublishModel got a second header; only the first message is one"
                    )
                yield msg.data

        m = await driver.publish(
            name=h.name,
            format=h.format,
            size=h.size,
            chunk_size=h.chunk_size,
            metadata=metadata_dict(h.metadata),
            replicas=h.replicas,
            pieces=pieces(),
            sha256=h.sha256,
            caller=caller_identity(context),
        )
        return agent_pb2.PublishModelResponse(version=version_proto(m, {self._models_node.name}))

    async def ListModels(
        self, request: agent_pb2.ListModelsRequest, context: Ctx
    ) -> agent_pb2.ListModelsResponse:
        driver = _driver(self._models_node)
        if request.name:
            check_model_name(request.name)
        entries = driver.entries(request.name)
        return agent_pb2.ListModelsResponse(
            versions=[version_proto(e.manifest, e.holders) for e in entries]
        )

    async def PullModel(
        self, request: agent_pb2.PullModelRequest, context: Ctx
    ) -> agent_pb2.PullModelResponse:
        driver = _driver(self._models_node)
        entry = driver.resolve(request.name, request.manifest_id)
        m = await driver.pull(entry)
        return agent_pb2.PullModelResponse(version=version_proto(m, _holders_after(driver, entry)))

    async def DeleteModel(
        self, request: agent_pb2.DeleteModelRequest, context: Ctx
    ) -> agent_pb2.DeleteModelResponse:
        driver = _driver(self._models_node)
        deleted = await driver.delete(
            request.name, request.manifest_id, caller=caller_identity(context)
        )
        return agent_pb2.DeleteModelResponse(deleted=deleted)


def _holders_after(driver: ModelsDriver, entry: Entry) -> set[str]:
    fresh = driver.entries_by_id([entry.manifest_id])
    holders = set(fresh[0].holders) if fresh else set(entry.holders)
    return holders | {driver.name}


class ModelsPeerApi:
    _models_node: ModelsNode

    async def FetchChunks(
        self, request: peer_pb2.FetchChunksRequest, context: Ctx
    ) -> AsyncIterator[peer_pb2.FetchChunksResponse]:
        """The same answers through protobuf. A node answers with ``fetch_chunks_handler``
        (added to the server first); this one serves where that handler is not added."""
        driver = _driver(self._models_node)
        chunks = driver.serve_chunks(request.manifest_id, list(request.indices), _copied)
        async for index, data in chunks:
            yield peer_pb2.FetchChunksResponse(index=index, data=data)


def fetch_chunks_handler(node: ModelsNode) -> grpc.GenericRpcHandler:
    """Serves ``Peer.FetchChunks`` with each answer built by ``chunk_wire.ChunkAnswers`` (the
    chunk read from disk into the answer: no copy of it, where protobuf makes two) and passed
    to gRPC as it is. Added to
    the server before ``PeerService``, whose generated table names the same method: gRPC
    asks the generic handlers in the order they were added, so this one answers."""

    async def fetch_chunks(
        request: peer_pb2.FetchChunksRequest, context: Ctx
    ) -> AsyncIterator[bytes]:
        driver = _driver(node)
        # Each chunk is read from disk into its answer, in an I/O thread (no copy of it here).
        answers = ChunkAnswers()
        chunks = driver.serve_chunks(
            request.manifest_id, list(request.indices), answers.encode, answers.buffer
        )
        async for _index, answer in chunks:
            yield answer

    service, method = FETCH_CHUNKS.strip("/").split("/")
    return grpc.method_handlers_generic_handler(
        service,
        {
            method: grpc.unary_stream_rpc_method_handler(
                fetch_chunks,
                request_deserializer=peer_pb2.FetchChunksRequest.FromString,
                response_serializer=_encoded,
            )
        },
    )


def _encoded(answer: bytes) -> bytes:
    return answer


def _copied(_index: int, data: memoryview) -> bytes:
    return bytes(data)

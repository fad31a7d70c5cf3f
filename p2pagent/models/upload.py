"""A model file as a ``PublishModel`` upload, on the client's side: the header checked as a
node would check it, then the file's bytes.

The header carries the SHA-256 of the whole file (read once before the upload): a node
publishes only what hashes to it, so bytes altered in transit publish nothing (DATA_LOSS).
Everything a node would refuse in the header (name, replicas, chunk size, metadata it could
not serve with, the format's magic) is refused before a byte is sent. The bytes follow only
once the node has accepted the header (``UPLOAD_ACCEPTED`` in its initial metadata): a
grpc.aio client whose write meets a call the node already ended loses the node's reason to
"Internal error from Core" (grpc/grpc#36066), so a refusal (the caller's role, the name's
owner) must arrive while the client is not writing. ``reason_lost_by_grpc`` says so when a
node ends an upload midway anyway (a full disk).
Used by ``p2pagentctl models push`` and ``p2pagent.client.Client.publish``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
from google.protobuf.json_format import ParseDict

from p2pagent._proto import agent_pb2, agent_pb2_grpc
from p2pagent.errors import Internal, InvalidArgument
from p2pagent.inference.formats import FORMAT_HEAD_BYTES, FORMAT_NAMES, ModelFormat, check_header
from p2pagent.inference.spec import ModelSpec
from p2pagent.models.loadable import serving_spec
from p2pagent.models.manifest import check_chunk_size, check_model_name, check_size, parse_replicas

#: Bytes of the file per upload message.
UPLOAD_PIECE = 1 << 20
#: The initial metadata a node sends once it has accepted an upload's header: the client's
#: cue to send the bytes.
UPLOAD_ACCEPTED = ("p2pagent-upload", "accepted")


def guess_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".safetensors"):
        return ModelFormat.SAFETENSORS.value
    if name.endswith(".pt2"):
        return ModelFormat.TORCH_EXPORT.value
    if name.endswith((".pt", ".pth", ".torchscript", ".ts")):
        return ModelFormat.TORCHSCRIPT.value
    raise InvalidArgument(
        f"cannot tell the format of {path.name}: pass --format {'|'.join(FORMAT_NAMES)}"
    )


def default_metadata(path: Path) -> Path | None:
    """``<stem>.metadata.json`` beside the model file (as ``--serve`` looks for), if present."""
    meta = path.with_name(path.name.split(".")[0] + ".metadata.json")
    return meta if meta.is_file() else None


def read_metadata(path: Path | None) -> agent_pb2.ModelMetadata:
    """A metadata file: a ModelSpec (``demo.metadata.json``) or ModelMetadata in proto JSON."""
    if path is None:
        return agent_pb2.ModelMetadata()
    try:
        text = path.read_text()
    except OSError as e:
        raise InvalidArgument(f"metadata file {path}: {e.strerror}") from None
    try:
        return ModelSpec.from_json(text).to_proto()
    except InvalidArgument as spec_error:
        metadata = agent_pb2.ModelMetadata()
        try:
            ParseDict(json.loads(text), metadata)
        except ValueError:
            raise InvalidArgument(f"metadata file {path}: {spec_error}") from None
        return metadata


def upload_header(
    path: Path,
    name: str,
    *,
    format: str = "",
    replicas: str = "1",
    chunk_size: int = 0,
    metadata: Path | None = None,
) -> agent_pb2.PublishModelRequest.Header:
    """The upload's header for the model file at ``path``; InvalidArgument for anything the
    node would refuse. ``format`` defaults to the file name's, ``metadata`` to the file
    beside it (``default_metadata``), ``chunk_size`` 0 to the node's."""
    if path.is_dir():
        if format not in ("", ModelFormat.HF_FOLDER.value) or metadata is not None:
            raise InvalidArgument(
                f"{path} is a folder: its format and metadata come from its own config files "
                "(leave out --format and --metadata)"
            )
        return folder_header(path, name, replicas=replicas, chunk_size=chunk_size)
    if not path.is_file():
        raise InvalidArgument(f"model file {path} does not exist")
    fmt = format or guess_format(path)
    spec = read_metadata(metadata or default_metadata(path))
    size = path.stat().st_size
    check_model_name(name)
    parse_replicas(replicas)
    if chunk_size:
        check_size(size, check_chunk_size(chunk_size))
    with path.open("rb") as f:
        check_header(ModelFormat.parse(fmt), f.read(FORMAT_HEAD_BYTES))
    has_spec = bool(spec.inputs or spec.outputs or spec.architecture)
    serving_spec(
        name, ModelFormat.parse(fmt), ModelSpec.from_proto(spec).to_dict() if has_spec else {}
    )
    return agent_pb2.PublishModelRequest.Header(
        name=name, format=fmt, metadata=spec, size=size, chunk_size=chunk_size, replicas=replicas,
        sha256=file_sha256(path),
    )  # fmt: skip


def folder_header(
    path: Path, name: str, *, replicas: str = "1", chunk_size: int = 0
) -> agent_pb2.PublishModelRequest.Header:
    """The header of a Hugging Face model folder's upload: its pack's size and SHA-256, and
    the metadata its config files give (``inference.hf.folder``: refused here, naming the
    problem, when a node could not serve it)."""
    from p2pagent.inference.hf import folder, pack

    check_model_name(name)
    parse_replicas(replicas)
    files = pack.describe_folder(path)
    spec = ModelSpec.from_dict(folder.folder_metadata(path, files))
    size = pack.pack_size(files)
    if chunk_size:
        check_size(size, check_chunk_size(chunk_size))
    digest = hashlib.sha256()
    for piece in pack.pack_pieces(path, files):
        digest.update(piece)
    return agent_pb2.PublishModelRequest.Header(
        name=name, format=ModelFormat.HF_FOLDER.value, metadata=spec.to_proto(), size=size,
        chunk_size=chunk_size, replicas=replicas, sha256=digest.hexdigest(),
    )  # fmt: skip


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the whole file: the node publishes only bytes that hash to it."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(UPLOAD_PIECE):
            digest.update(piece)
    return digest.hexdigest()


async def send_upload(
    stub: agent_pb2_grpc.AgentServiceAsyncStub,
    path: Path,
    header: agent_pb2.PublishModelRequest.Header,
    sent: Callable[[int], object] | None = None,
    *,
    call_timeout_s: float,
) -> agent_pb2.PublishModelResponse:
    """Uploads ``path`` with ``header``: the header, then (once the node accepted it) the
    bytes. A refusal raises the node's own error (AioRpcError)."""
    call = stub.PublishModel(timeout=call_timeout_s)
    await call.write(agent_pb2.PublishModelRequest(header=header))
    key, accepted = UPLOAD_ACCEPTED
    if (await call.initial_metadata()).get(key) != accepted:
        return await call  # refused (or answered) before any byte: the reason is intact
    with reason_lost_by_grpc():
        try:
            async for piece in upload_pieces(path, header, sent):
                await call.write(agent_pb2.PublishModelRequest(data=piece))
            await call.done_writing()
        except asyncio.InvalidStateError:
            pass  # the node ended the upload midway: awaiting the call raises its answer
        return await call


async def upload_pieces(
    path: Path,
    header: agent_pb2.PublishModelRequest.Header,
    sent: Callable[[int], object] | None = None,
) -> AsyncIterator[bytes]:
    """The file's bytes in pieces (each one's size to ``sent``)."""
    if header.format == ModelFormat.HF_FOLDER.value:
        from p2pagent.inference.hf import folder, pack

        spec = ModelSpec.from_proto(header.metadata)
        for piece in pack.pack_pieces(path, folder.listed_files(spec.arch_config)):
            if sent is not None:
                sent(len(piece))
            yield piece
        return
    with path.open("rb") as f:
        while piece := f.read(UPLOAD_PIECE):
            if sent is not None:
                sent(len(piece))
            yield piece


@contextlib.contextmanager
def reason_lost_by_grpc() -> Iterator[None]:
    """An upload that the node ended early and whose reason grpc.aio lost (grpc/grpc#36066)
    raised as Internal saying so; any other error passes."""
    try:
        yield
    except grpc.aio.AioRpcError as e:
        if e.code() is not grpc.StatusCode.INTERNAL or e.details() != "Internal error from Core":
            raise
        raise Internal(
            "the node ended the upload before it was complete, and grpc lost its reason; "
            "nothing was published: see the node's log, then push again"
        ) from e

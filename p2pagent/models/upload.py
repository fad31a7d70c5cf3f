"""A model file as a ``PublishModel`` upload, on the client's side: the header checked as a
node would check it, then the file's bytes.

The header carries the SHA-256 of the whole file (read once before the upload): a node
publishes only what hashes to it, so bytes altered in transit publish nothing (DATA_LOSS).
Everything a node would refuse in the header or the first bytes (name, replicas, chunk size,
metadata it could not serve with, the format's magic) is refused before a byte is sent: a
node that ends an upload early has its reason replaced by "Internal error from Core" on a
grpc.aio client about once in ten (grpc/grpc#36066). ``reason_lost_by_grpc`` says so when it
happens anyway (a full disk).
Used by ``p2pagentctl models push`` and ``p2pagent.client.Client.publish``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
from google.protobuf.json_format import ParseDict

from p2pagent._proto import agent_pb2
from p2pagent.errors import Internal, InvalidArgument
from p2pagent.inference.formats import FORMAT_HEAD_BYTES, FORMAT_NAMES, ModelFormat, check_header
from p2pagent.inference.spec import ModelSpec
from p2pagent.models.loadable import serving_spec
from p2pagent.models.manifest import check_chunk_size, check_model_name, check_size, parse_replicas

#: Bytes of the file per upload message.
UPLOAD_PIECE = 1 << 20


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


async def upload_requests(
    path: Path,
    header: agent_pb2.PublishModelRequest.Header,
    sent: Callable[[int], object] | None = None,
) -> AsyncIterator[agent_pb2.PublishModelRequest]:
    """The header, then the file in pieces (each one's size to ``sent``)."""
    yield agent_pb2.PublishModelRequest(header=header)
    if header.format == ModelFormat.HF_FOLDER.value:
        from p2pagent.inference.hf import folder, pack

        spec = ModelSpec.from_proto(header.metadata)
        for piece in pack.pack_pieces(path, folder.listed_files(spec.arch_config)):
            if sent is not None:
                sent(len(piece))
            yield agent_pb2.PublishModelRequest(data=piece)
        return
    with path.open("rb") as f:
        while piece := f.read(UPLOAD_PIECE):
            if sent is not None:
                sent(len(piece))
            yield agent_pb2.PublishModelRequest(data=piece)


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

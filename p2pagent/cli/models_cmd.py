"""``p2pagentctl models push|ls|pull|rm``: the replicated model registry."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import ParseDict

from p2pagent._proto import agent_pb2
from p2pagent.cli import client
from p2pagent.cli.args import UINT32_MAX, int_in
from p2pagent.cli.output import emit_json, key_values, table
from p2pagent.cli.progress import ticker
from p2pagent.errors import Internal, InvalidArgument
from p2pagent.inference.spec import ModelSpec
from p2pagent.models.manifest import (
    FORMAT_HEAD_BYTES,
    ModelFormat,
    check_chunk_size,
    check_header,
    check_model_name,
    check_size,
    parse_replicas,
)
from p2pagent.transport.errors import map_rpc_errors

FORMATS = ("torchscript", "export", "safetensors")
UPLOAD_PIECE = 1 << 20


def register(sub: Any) -> None:
    p = sub.add_parser("models", help="publish, list, pull and delete models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = msub.add_parser(name, help=help)
        client.add_connection_flags(c)
        c.add_argument("--json", action="store_true")
        return c

    push = cmd("push", "publish a model file")
    push.add_argument("file", type=Path)
    push.add_argument("--name", required=True)
    push.add_argument("--format", choices=FORMATS, help="default: from the file name")
    push.add_argument(
        "--metadata",
        type=Path,
        help="JSON: inputs/outputs (and architecture); default: <stem>.metadata.json beside FILE",
    )
    push.add_argument("--replicas", default="1", help="K or 'all' (default 1)")
    push.add_argument(
        "--chunk-size", type=int_in(0, UINT32_MAX), default=0, help="bytes (default: node's)"
    )
    push.add_argument("--no-progress", action="store_true")
    push.set_defaults(handler=_push)

    ls = cmd("ls", "list model versions")
    ls.add_argument("name", nargs="?", default="")
    ls.set_defaults(handler=_ls)

    pull = cmd("pull", "make the target node hold a model")
    pull.add_argument("name")
    pull.add_argument("--version", default="", help="manifest id (default: latest)")
    pull.set_defaults(handler=_pull)

    rm = cmd("rm", "delete a model (every version unless --version)")
    rm.add_argument("name")
    rm.add_argument("--version", default="")
    rm.set_defaults(handler=_rm)


def guess_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith(".pt2"):
        return "export"
    if name.endswith((".pt", ".pth", ".torchscript", ".ts")):
        return "torchscript"
    raise InvalidArgument(
        f"cannot tell the format of {path.name}: pass --format {'|'.join(FORMATS)}"
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


def version_doc(v: agent_pb2.ModelVersion) -> dict[str, Any]:
    return {
        "name": v.name,
        "version": v.manifest_id[:12],
        "manifest_id": v.manifest_id,
        "format": v.format,
        "size": v.size,
        "chunks": v.chunks,
        "replicas": v.replicas or "1",
        "holders": sorted(v.holders),
        "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.created_unix)),
    }


class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.sent, self.enabled = total, 0, enabled and sys.stderr.isatty()
        self.start = time.monotonic()

    def add(self, n: int) -> None:
        self.sent += n
        if not self.enabled:
            return
        frac = self.sent / self.total if self.total else 1.0
        rate = self.sent / max(time.monotonic() - self.start, 1e-6) / 1e6
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r[{bar:<30}] {frac * 100:5.1f}% {rate:7.1f} MB/s")
        if self.sent >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


async def _upload(
    args: argparse.Namespace, header: agent_pb2.PublishModelRequest.Header, progress: _Progress
) -> AsyncIterator[agent_pb2.PublishModelRequest]:
    yield agent_pb2.PublishModelRequest(header=header)
    with args.file.open("rb") as f:
        while piece := f.read(UPLOAD_PIECE):
            progress.add(len(piece))
            yield agent_pb2.PublishModelRequest(data=piece)


@contextlib.contextmanager
def _reason_lost_by_grpc() -> Iterator[None]:
    """grpc.aio replaces the status of a node that ends an upload early (it refused it, e.g.
    a full disk) by this when a write was still in flight (grpc/grpc#36066); say so."""
    try:
        yield
    except grpc.aio.AioRpcError as e:
        if e.code() is not grpc.StatusCode.INTERNAL or e.details() != "Internal error from Core":
            raise
        raise Internal(
            "the node ended the upload before it was complete, and grpc lost its reason; "
            "nothing was published: see the node's log, then push again"
        ) from e


async def _push(args: argparse.Namespace) -> int:
    if args.file.is_dir():
        raise InvalidArgument(f"{args.file} is a directory: push one model file")
    if not args.file.is_file():
        raise InvalidArgument(f"model file {args.file} does not exist")
    fmt = args.format or guess_format(args.file)
    metadata = read_metadata(args.metadata or default_metadata(args.file))
    size = args.file.stat().st_size
    # What the node would refuse in the header is refused here, before any byte is sent:
    # a node that ends an upload early has its reason replaced by "Internal error from Core"
    # on the client about once in ten (grpc.aio, grpc/grpc#36066).
    check_model_name(args.name)
    parse_replicas(args.replicas)
    if args.chunk_size:
        check_size(size, check_chunk_size(args.chunk_size))
    with args.file.open("rb") as f:
        check_header(ModelFormat.parse(fmt), f.read(FORMAT_HEAD_BYTES))
    header = agent_pb2.PublishModelRequest.Header(
        name=args.name,
        format=fmt,
        metadata=metadata,
        size=size,
        chunk_size=args.chunk_size,
        replicas=args.replicas,
    )
    progress = _Progress(size, not args.no_progress and not args.json)
    async with client.channel(args) as ch:
        with map_rpc_errors(), _reason_lost_by_grpc():
            resp = await client.agent(ch).PublishModel(
                _upload(args, header, progress), timeout=max(args.timeout, 600)
            )
    doc = version_doc(resp)
    if args.json:
        emit_json(doc)
    else:
        print(f"published {resp.name} version {resp.manifest_id[:12]} ({size} bytes)")
    return 0


async def _ls(args: argparse.Namespace) -> int:
    async with client.channel(args) as ch:
        with map_rpc_errors():
            resp = await client.agent(ch).ListModels(
                agent_pb2.ListModelsRequest(name=args.name), timeout=args.timeout
            )
    rows = [version_doc(v) for v in resp.versions]
    if args.json:
        emit_json(rows)
    else:
        print(table(rows, ["name", "version", "format", "size", "replicas", "holders", "created"]))
    return 0


async def _pull(args: argparse.Namespace) -> int:
    label = f"pulling {args.name} on {args.target}"
    async with client.channel(args) as ch, ticker(label, enabled=not args.json):
        with map_rpc_errors():
            resp = await client.agent(ch).PullModel(
                agent_pb2.PullModelRequest(name=args.name, manifest_id=args.version),
                timeout=max(args.timeout, 600),
            )
    doc = version_doc(resp)
    if args.json:
        emit_json(doc)
    else:
        print(key_values(doc))
    return 0


async def _rm(args: argparse.Namespace) -> int:
    async with client.channel(args) as ch:
        with map_rpc_errors():
            resp = await client.agent(ch).DeleteModel(
                agent_pb2.DeleteModelRequest(name=args.name, manifest_id=args.version),
                timeout=args.timeout,
            )
    if args.json:
        emit_json({"deleted": resp.deleted})
    else:
        print(f"deleted {resp.deleted} version(s) of {args.name}")
    return 0

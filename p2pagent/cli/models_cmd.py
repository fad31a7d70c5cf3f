"""``p2pagentctl models push|ls|pull|rm``: the replicated model registry."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from p2pagent._proto import agent_pb2
from p2pagent.cli import client
from p2pagent.cli.args import UINT32_MAX, int_in
from p2pagent.cli.output import emit_json, key_values, table
from p2pagent.cli.progress import ticker
from p2pagent.inference.formats import FORMAT_NAMES
from p2pagent.models.upload import upload_header


def register(sub: Any) -> None:
    p = sub.add_parser("models", help="publish, list, pull and delete models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = msub.add_parser(name, help=help)
        client.add_connection_flags(c)
        c.add_argument("--json", action="store_true")
        return c

    push = cmd("push", "publish a model file, or a Hugging Face model folder")
    push.add_argument("file", type=Path)
    push.add_argument("--name", required=True)
    push.add_argument("--format", choices=FORMAT_NAMES, help="default: from the file name")
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
        "owner": v.owner,
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


async def _push(args: argparse.Namespace) -> int:
    # The file is checked before anything else: what the node would refuse never needs
    # certificates or a connection to be found out.
    header = upload_header(
        args.file,
        args.name,
        format=args.format or "",
        replicas=args.replicas,
        chunk_size=args.chunk_size,
        metadata=args.metadata,
    )
    size = header.size
    progress = _Progress(size, not args.no_progress and not args.json)
    async with client.mesh(args) as mesh:
        resp = await mesh.upload(args.file, header, progress.add)
    doc = version_doc(resp)
    if args.json:
        emit_json(doc)
    else:
        print(f"published {resp.name} version {resp.manifest_id[:12]} ({size} bytes)")
    return 0


async def _ls(args: argparse.Namespace) -> int:
    async with client.mesh(args) as mesh:
        versions = await mesh.models(args.name)
    rows = [version_doc(v) for v in versions]
    if args.json:
        emit_json(rows)
    else:
        columns = ["name", "version", "format", "size", "replicas", "holders", "owner", "created"]
        print(table(rows, columns))
    return 0


async def _pull(args: argparse.Namespace) -> int:
    label = f"pulling {args.name} on {args.target}"
    async with client.mesh(args) as mesh, ticker(label, enabled=not args.json):
        resp = await mesh.call(
            "PullModel",
            agent_pb2.PullModelRequest(name=args.name, manifest_id=args.version),
            repeatable=True,  # a second pull of a version joins or finds the first
            timeout_s=max(args.timeout, 600),
        )
    doc = version_doc(resp.version)
    if args.json:
        emit_json(doc)
    else:
        print(key_values(doc))
    return 0


async def _rm(args: argparse.Namespace) -> int:
    async with client.mesh(args) as mesh:
        resp = await mesh.call(
            "DeleteModel",
            agent_pb2.DeleteModelRequest(name=args.name, manifest_id=args.version),
            repeatable=True,  # deleting what is already deleted deletes nothing more
        )
    if args.json:
        emit_json({"deleted": resp.deleted})
    else:
        print(f"deleted {resp.deleted} version(s) of {args.name}")
    return 0

"""``p2pagentctl state put|get|del|incr|sadd|srem|scan|watch``: the replicated state."""

from __future__ import annotations

import argparse
import base64
from contextlib import aclosing
from typing import Any, TypeVar

from p2pagent._proto import agent_pb2
from p2pagent.cli import client
from p2pagent.cli.args import INT64, UINT32_MAX, UINT64_MAX, int_in
from p2pagent.cli.output import emit_json, key_values, table

TYPES = {"lww": agent_pb2.VALUE_TYPE_LWW, "mv": agent_pb2.VALUE_TYPE_MV}
CONSISTENCY = {
    "local": agent_pb2.CONSISTENCY_LOCAL,
    "peers": agent_pb2.CONSISTENCY_PEERS,
    "majority": agent_pb2.CONSISTENCY_MAJORITY,
}


def register(sub: Any) -> None:
    p = sub.add_parser("state", help="read and write the replicated state")
    ssub = p.add_subparsers(dest="state_command", metavar="ACTION", required=True)

    def cmd(name: str, help: str, key: bool = True) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = ssub.add_parser(name, help=help)
        client.add_connection_flags(c)
        c.add_argument("--ns", default="default", help="namespace (default %(default)s)")
        c.add_argument("--json", action="store_true")
        if key:
            c.add_argument("state_key", metavar="KEY")
        return c

    def write_flags(c: argparse.ArgumentParser) -> None:
        c.add_argument("--durable", action="store_true", help="acknowledge only once on disk")
        c.add_argument("--consistency", choices=list(CONSISTENCY), default="local")
        c.add_argument(
            "--acks", type=int_in(0, UINT32_MAX), default=0, help="peers to wait for with 'peers'"
        )

    put = cmd("put", "write a register")
    put.add_argument("value")
    put.add_argument("--type", choices=list(TYPES), default="lww", help="lww or mv register")
    write_flags(put)
    put.set_defaults(handler=_put)

    get = cmd("get", "read a key")
    get.set_defaults(handler=_get)

    delete = cmd("del", "delete a key")
    write_flags(delete)
    delete.set_defaults(handler=_del)

    incr = cmd("incr", "add to a counter")
    incr.add_argument("delta", nargs="?", type=int_in(*INT64), default=1)
    write_flags(incr)
    incr.set_defaults(handler=_incr)

    for name, handler, help in (("sadd", _sadd, "add to a set"), ("srem", _srem, "remove")):
        s = cmd(name, help)
        s.add_argument("elements", nargs="+")
        write_flags(s)
        s.set_defaults(handler=handler)

    scan = cmd("scan", "list keys under a prefix", key=False)
    scan.add_argument("prefix", nargs="?", default="")
    scan.add_argument("--limit", type=int_in(1, UINT32_MAX), default=100)
    scan.set_defaults(handler=_scan)

    watch = cmd("watch", "stream changes under a prefix", key=False)
    watch.add_argument("prefix", nargs="?", default="")
    watch.add_argument(
        "--from-seq", type=int_in(0, UINT64_MAX), default=0, help="resume after this sequence"
    )
    watch.add_argument(
        "--count", type=int_in(0, INT64[1]), default=0, help="stop after N changes (0 = never)"
    )
    watch.set_defaults(handler=_watch)


def show_bytes(b: bytes) -> str:
    try:
        return b.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(b).decode()


def value_doc(v: agent_pb2.GetResponse) -> dict[str, Any]:
    kind = agent_pb2.ValueType.Name(v.type).removeprefix("VALUE_TYPE_").lower()
    doc: dict[str, Any] = {"type": kind, "version": dict(v.version)}
    if v.type == agent_pb2.VALUE_TYPE_COUNTER:
        doc["value"] = v.counter
    elif v.type == agent_pb2.VALUE_TYPE_SET:
        doc["value"] = [show_bytes(e) for e in v.elements]
    elif v.type == agent_pb2.VALUE_TYPE_MV:
        doc["value"] = [show_bytes(x) for x in v.values]
        doc["siblings"] = len(v.values)
    else:
        doc["value"] = show_bytes(v.values[0]) if v.values else None
    return doc


def _options(args: argparse.Namespace) -> agent_pb2.WriteOptions:
    return agent_pb2.WriteOptions(
        durable=args.durable, consistency=CONSISTENCY[args.consistency], acks=args.acks
    )


#: Writes that may be sent to another node after reaching one: applying them twice is the
#: same as once (an increment is not).
REPEATABLE = {"Put", "Delete", "SetAdd", "SetRemove"}


async def _write(args: argparse.Namespace, method: str, req: Any) -> int:
    async with client.mesh(args) as mesh:
        resp = await mesh.call(method, req, repeatable=method in REPEATABLE)
    doc = {"key": args.state_key, "version": dict(resp.version), "acked_by": resp.acked_by}
    if args.json:
        emit_json(doc)
    else:
        print(f"ok {args.ns}/{args.state_key} (acked by {resp.acked_by})")
    return 0


async def _put(args: argparse.Namespace) -> int:
    req = agent_pb2.PutRequest(
        namespace=args.ns,
        key=args.state_key,
        value=args.value.encode(),
        type=TYPES[args.type],
        options=_options(args),
    )
    return await _write(args, "Put", req)


async def _del(args: argparse.Namespace) -> int:
    req = agent_pb2.DeleteRequest(namespace=args.ns, key=args.state_key, options=_options(args))
    return await _write(args, "Delete", req)


async def _incr(args: argparse.Namespace) -> int:
    req = agent_pb2.IncrementRequest(
        namespace=args.ns, key=args.state_key, delta=args.delta, options=_options(args)
    )
    return await _write(args, "Increment", req)


SetRequest = TypeVar("SetRequest", agent_pb2.SetAddRequest, agent_pb2.SetRemoveRequest)


def _set_req(args: argparse.Namespace, kind: type[SetRequest]) -> SetRequest:
    return kind(
        namespace=args.ns,
        key=args.state_key,
        elements=[e.encode() for e in args.elements],
        options=_options(args),
    )


async def _sadd(args: argparse.Namespace) -> int:
    return await _write(args, "SetAdd", _set_req(args, agent_pb2.SetAddRequest))


async def _srem(args: argparse.Namespace) -> int:
    return await _write(args, "SetRemove", _set_req(args, agent_pb2.SetRemoveRequest))


async def _get(args: argparse.Namespace) -> int:
    async with client.mesh(args) as mesh:
        resp = await mesh.get(args.ns, args.state_key)
    if not resp.found:
        if args.json:
            emit_json({"key": args.state_key, "found": False})
        else:
            print(f"{args.ns}/{args.state_key}: not found")
        return 1
    doc = {"key": args.state_key, "found": True, **value_doc(resp)}
    if args.json:
        emit_json(doc)
    else:
        print(key_values(doc))
    return 0


async def _scan(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    token = ""
    async with client.mesh(args) as mesh:
        while len(rows) < args.limit:
            req = agent_pb2.ScanRequest(
                namespace=args.ns,
                prefix=args.prefix,
                limit=min(100, args.limit - len(rows)),
                page_token=token,
            )
            resp = await mesh.call("Scan", req, repeatable=True)
            rows += [{"key": e.key, **value_doc(e.value)} for e in resp.entries]
            token = resp.next_page_token
            if not token:
                break
    if args.json:
        emit_json(rows)
    else:
        print(table(rows, ["key", "type", "value"]))
    return 0


async def _watch(args: argparse.Namespace) -> int:
    req = agent_pb2.WatchRequest(namespace=args.ns, prefix=args.prefix, from_seq=args.from_seq)
    seen = 0
    async with client.mesh(args) as mesh, aclosing(mesh.stream("Watch", req)) as changes:
        async for change in changes:
            doc: dict[str, Any] = {"seq": change.seq, "key": change.key}
            if change.deleted:
                doc["deleted"] = True
            else:
                doc.update(value_doc(change.value))
            if args.json:
                emit_json(doc)
            else:
                what = "deleted" if change.deleted else doc.get("value")
                print(f"#{change.seq} {change.namespace}/{change.key} = {what}", flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0

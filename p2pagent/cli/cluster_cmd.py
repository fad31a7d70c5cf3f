"""``p2pagentctl status``, ``p2pagentctl members`` and ``p2pagentctl revoke``."""

from __future__ import annotations

import argparse
from typing import Any

from google.protobuf.json_format import MessageToDict

from p2pagent._proto import agent_pb2
from p2pagent.cli import client
from p2pagent.cli.output import emit_json, key_values, table

STATE_ORDER = {"alive": 0, "suspect": 1, "left": 2, "dead": 3}


def register(sub: Any) -> None:
    status = sub.add_parser("status", help="the node's identity, health, device and load")
    client.add_connection_flags(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)

    members = sub.add_parser("members", help="the membership list as the node sees it")
    client.add_connection_flags(members)
    members.add_argument("--json", action="store_true")
    members.set_defaults(handler=_members)

    revoke = sub.add_parser(
        "revoke",
        help="refuse an identity on every node (needs an admin certificate: --identity NAME)",
    )
    client.add_connection_flags(revoke)
    revoke.add_argument("uri", metavar="SPIFFE_URI", help="e.g. spiffe://<cluster>/client/alice")
    revoke.add_argument("--reason", default="", help="recorded with the revocation")
    revoke.add_argument("--json", action="store_true")
    revoke.set_defaults(handler=_revoke)


async def _revoke(args: argparse.Namespace) -> int:
    req = agent_pb2.RevokeRequest(identity=args.uri, reason=args.reason)
    async with client.mesh(args) as mesh:
        await mesh.call("Revoke", req, repeatable=True)  # a replicated put: harmless twice
    if args.json:
        emit_json({"revoked": args.uri, "reason": args.reason})
    else:
        print(f"revoked {args.uri}; every node refuses it once the change has spread")
    return 0


def status_doc(resp: agent_pb2.StatusResponse) -> dict[str, Any]:
    return MessageToDict(
        resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


async def _status(args: argparse.Namespace) -> int:
    async with client.mesh(args) as mesh:
        resp = await mesh.status()
    doc = status_doc(resp)
    if args.json:
        emit_json(doc)
    else:
        print(key_values(doc))
    return 0


def member_docs(resp: agent_pb2.MembersResponse) -> list[dict[str, Any]]:
    docs = [
        {
            "name": m.name,
            "address": m.address,
            "state": m.state,
            "incarnation": m.incarnation,
            "tags": dict(m.tags),
        }
        for m in resp.members
    ]
    docs.sort(key=lambda d: (STATE_ORDER.get(str(d["state"]), 9), str(d["name"])))
    return docs


async def _members(args: argparse.Namespace) -> int:
    async with client.mesh(args) as mesh:
        resp = await mesh.call("Members", agent_pb2.MembersRequest(), repeatable=True)
    docs = member_docs(resp)
    if args.json:
        emit_json(docs)
    else:
        print(table(docs, ["name", "address", "state", "incarnation", "tags"]))
    return 0

"""``p2pagentctl train status [--run NAME] [--json]``: the training runs a node takes part in."""

from __future__ import annotations

import argparse
from typing import Any

from google.protobuf.json_format import MessageToDict

from p2pagent._proto import agent_pb2
from p2pagent.cli import client
from p2pagent.cli.output import emit_json, table

COLUMNS = (
    "run", "rounds", "last_round", "members", "last_round_s", "phase_timeout_s", "bytes_sent",
    "bytes_received", "refused", "incomplete_rounds", "last_published",
)  # fmt: skip


def register(sub: Any) -> None:
    train = sub.add_parser("train", help="parameter-averaging runs (see docs/TRAINING.md)")
    actions = train.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status", help="rounds, members, last round time, bytes and refused parts per run"
    )
    client.add_connection_flags(status)
    status.add_argument("--run", default="", help="one run (default: every run on the node)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)


def run_docs(resp: agent_pb2.TrainStatusResponse) -> list[dict[str, Any]]:
    return [
        MessageToDict(
            r, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        for r in resp.runs
    ]


async def _status(args: argparse.Namespace) -> int:
    req = agent_pb2.TrainStatusRequest(run=args.run)
    async with client.mesh(args) as mesh:
        resp = await mesh.call("TrainStatus", req, repeatable=True)
    docs = run_docs(resp)
    if args.json:
        emit_json({"runs": docs})
    elif not docs:
        print("this node takes part in no training run")
    else:
        rows = [{**d, "members": len(d.get("members", []))} for d in docs]
        print(table(rows, COLUMNS))
    return 0

"""``p2pagentctl certs init|issue``: the cluster CA and per-node / per-client certificates."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from p2pagent.cli.args import int_in
from p2pagent.cli.output import emit_json
from p2pagent.identity import certs
from p2pagent.identity.spiffe import Role

#: Longest validity ``certs issue --days`` accepts (a hundred years).
MAX_DAYS = 36_500


def register(sub: Any) -> None:
    p = sub.add_parser("certs", help="make the cluster CA and issue certificates")
    csub = p.add_subparsers(dest="certs_command", metavar="ACTION", required=True)

    init = csub.add_parser("init", help="create a cluster CA (ECDSA P-256)")
    init.add_argument("--dir", required=True, type=Path, help="certificate directory")
    init.add_argument("--cluster", required=True, help="cluster name (the SPIFFE trust domain)")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.add_argument("--json", action="store_true")
    init.set_defaults(handler=_init)

    issue = csub.add_parser("issue", help="issue a node or client certificate")
    issue.add_argument("--dir", required=True, type=Path, help="certificate directory with ca.*")
    issue.add_argument("--name", required=True, help="node or client name")
    issue.add_argument("--role", required=True, choices=[r.value for r in Role])
    issue.add_argument(
        "--host", action="append", default=[], help="DNS name or IP SAN (repeatable)"
    )
    issue.add_argument(
        "--days", type=int_in(1, MAX_DAYS), default=certs.LEAF_DAYS, help="validity in days"
    )
    issue.add_argument("--force", action="store_true", help="replace an existing certificate")
    issue.add_argument("--json", action="store_true")
    issue.set_defaults(handler=_issue)


async def _init(args: argparse.Namespace) -> int:
    path = certs.init_ca(args.dir, args.cluster, force=args.force)
    if args.json:
        emit_json({"ca": str(path), "cluster": args.cluster})
    else:
        print(f"created CA for cluster {args.cluster!r} in {args.dir} ({path.name}, ca.key 0600)")
    return 0


async def _issue(args: argparse.Namespace) -> int:
    issued = certs.issue(
        args.dir, args.name, Role(args.role), args.host, days=args.days, force=args.force
    )
    if args.json:
        emit_json(
            {"identity": issued.identity.uri, "cert": str(issued.cert), "key": str(issued.key)}
        )
    else:
        print(f"issued {issued.identity} -> {issued.cert}, {issued.key} (0600)")
    return 0
